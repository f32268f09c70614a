"""Time request validation, old against new, and the registry build, cold and cached.

    python -m bench.validation_bench [--old-ref ba06063] [--runs 5] [--json out.json]

* **Validation** (µs per call, median of ``--runs`` rounds of ``--number`` calls): the
  hand-made 3.0 validator and its registry, read from git at ``--old-ref`` (the last commit
  before jsonschema_rs), against ``openai_django.validation`` today, on a chat completion body
  and on a Responses body with a tool. The old one never knew ``/responses``: it is given the
  2.3.0 schema with its ``$ref`` inlined the old way (a cycle cut to ``{}``), and, as it ignores
  ``allOf``, checks little of it; the figure is what it would cost, not what it would catch.
  An invalid chat body times the error path (choosing the branch, writing the message).
* **Registry build** (ms, median of ``--runs`` fresh processes, imports excluded): cold (an
  empty ``OPENAI_DJANGO_SPEC_CACHE``: both YAML documents parsed) and cached; then the first
  validation of a process (the schema resource built and one validator compiled).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHAT = {
    "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 64, "stream": False,
    "messages": [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "And three more?"},
    ],
}
CHAT_INVALID = {**CHAT, "messages": [*CHAT["messages"], {"role": "robot", "content": "x"}]}
RESPONSES = {
    "model": "gpt-5.4", "instructions": "Answer briefly.", "temperature": 0.5,
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    ],
    "tools": [{"type": "function", "name": "weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
    "tool_choice": "auto",
}

_BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from openai_django import spec
from openai_django.validation import validate_json
t = time.perf_counter()
registry = spec.get_registry()
built = time.perf_counter()
validate_json(registry["createChatCompletion"], {chat!r})
print((built - t) * 1000, (time.perf_counter() - built) * 1000)
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", default="ba06063",
                        help="the commit whose validation.py and spec.py are the old ones")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--json", help="write the figures here as JSON")
    return parser.parse_args(argv)


def _old_module(ref, name, path):
    """A module made from ``path`` as it was at ``ref``, with ``__file__`` where it lived (so
    the old spec.py finds the bundled openapi.yaml)."""
    source = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / path)
    exec(compile(source, str(ROOT / path), "exec"), module.__dict__)
    return module


def per_call_us(call, body, number, runs):
    """The median of ``runs`` rounds, in µs per call; ``call`` may refuse (the error path)."""
    from openai_django.errors import InvalidRequest

    rounds = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(number):
            try:
                call(body)
            except InvalidRequest:  # the invalid body: its refusal is what is timed
                pass
        rounds.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(rounds)


def validation_figures(args):
    from openai_django import spec
    from openai_django.validation import validate_json

    old_spec = _old_module(args.old_ref, "old_spec", "openai_django/spec.py")
    old_validation = _old_module(args.old_ref, "old_validation", "openai_django/validation.py")
    old_registry = old_spec.get_registry()
    components = spec.get_registry().documents["2.3.0"]["components"]
    old_responses = types.SimpleNamespace(schema=old_spec._resolve(
        spec.get_registry()["createResponse"].schema, components))
    new = spec.get_registry()
    old_chat = old_registry["createChatCompletion"]
    cases = {
        "chat": (lambda b: old_validation.validate_json(old_chat, b),
                 lambda b: validate_json(new["createChatCompletion"], b), CHAT),
        "chat_invalid": (lambda b: old_validation.validate_json(old_chat, b),
                         lambda b: validate_json(new["createChatCompletion"], b), CHAT_INVALID),
        "responses": (lambda b: old_validation.validate_json(old_responses, b),
                      lambda b: validate_json(new["createResponse"], b), RESPONSES),
    }
    figures = {}
    for name, (old, current, body) in cases.items():
        per_call_us(current, body, 1, 1)  # the validator is compiled outside the timing
        figures[name] = {"old_us": per_call_us(old, body, args.number, args.runs),
                         "new_us": per_call_us(current, body, args.number, args.runs)}
    return figures


def build_figures(args):
    """Registry build (cold, cached) and first validation, each in fresh processes."""
    script = _BUILD.format(root=str(ROOT), chat=CHAT)
    figures = {"cold_ms": [], "cached_ms": [], "first_validation_ms": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            env = {"OPENAI_DJANGO_SPEC_CACHE": cache, "PATH": "/usr/bin:/bin"}
            for key in ("cold_ms", "cached_ms"):
                out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()
                figures[key].append(float(out[0]))
                figures["first_validation_ms"].append(float(out[1]))
    return {key: statistics.median(values) for key, values in figures.items()}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    result = {"validation": validation_figures(args), "registry": build_figures(args)}
    print("| body | old µs/call | new µs/call |\n|---|---|---|")
    for name, row in result["validation"].items():
        print(f"| {name} | {row['old_us']:.1f} | {row['new_us']:.1f} |")
    registry = result["registry"]
    print(f"\nregistry build: cold {registry['cold_ms']:.0f} ms, cached "
          f"{registry['cached_ms']:.0f} ms; first validation {registry['first_validation_ms']:.1f}"
          f" ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
