"""What routing among many upstreams and a fallback add to a call.

    .venv/bin/python -m bench.upstreams_bench                # about a minute
    .venv/bin/python -m bench.upstreams_bench --quick
    .venv/bin/python -m bench --only upstreams               # the same, as scenario "upstreams"

One process, c=1, through the gateway's Python API (``openai_django.create``: the invocation
built and validated, the record written first and finished, the upstream asked; no HTTP
server in front, so the figures are the gateway's own work), against stand-ins in fast mode
on loopback. Configurations, interleaved call by call so that load on the machine falls on
all of them alike:

* ``single``: ``BASE_URL`` only (the one-upstream path, no routing);
* ``ten``: ``UPSTREAMS`` with ten upstreams, each listing three names and a pattern, the model
  asked served by the last one (every pattern tried: the worst case), a ``FALLBACKS`` entry;
* ``fallback``: a route of two upstreams whose first answers 429 to every call (the attempt
  and its failure recorded, the circuit breaker off: threshold above the number of calls),
  so each call makes two upstream requests.

Figures: median and p99 per configuration (ms), and the medians' differences from
``single``; plus ``route_us``, the CPU cost of choosing the route for a call (the memo warm,
and cold: ten upstreams, the model's route computed afresh).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-upstream"
HELLO = [{"role": "user", "content": "hi"}]


def ten_upstreams(url, model):
    upstreams = {}
    for n in range(10):
        models = [f"model-{n}-a", f"model-{n}-b", f"model-{n}-c", f"family-{n}-*"]
        if n == 9:
            models.append(model)
        upstreams[f"u{n}"] = {"base_url": url, "api_key": KEY, "models": models}
    return upstreams


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "upstreams.json"))
    parser.add_argument("--calls", type=int, default=1500, help="calls per configuration")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 100
    workdir = tempfile.mkdtemp(prefix="openai-django-upstreams-bench-")
    from openai_django.testing import StandinServer

    fast = StandinServer(fast=True, api_key=KEY, log_level="warning").start()
    refusing = StandinServer(fast=True, api_key=KEY, log_level="warning").start()
    try:
        refusing.fault(path="/v1/chat/completions", kind="status", status=429, times=-1)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        os.environ.setdefault("DJANGO_DEBUG", "0")
        os.environ.setdefault("DJANGO_MEDIA_ROOT", str(Path(workdir) / "media"))
        os.environ.setdefault("DJANGO_VAR_DIR", workdir)
        os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir}/upstreams-bench.sqlite3")
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test.utils import override_settings

        call_command("migrate", verbosity=0, interactive=False)
        import openai_django
        from openai_django import upstreams
        from openai_django.invocation import from_kwargs

        user, _ = get_user_model().objects.get_or_create(username="bench-upstreams")
        base = dict(getattr(settings, "OPENAI_DJANGO", {}) or {})
        model = "gpt-4o-mini"
        configs = {
            "single": {**base, "BASE_URL": fast.url, "API_KEY": KEY, "UPSTREAMS": None},
            "ten": {**base, "UPSTREAMS": ten_upstreams(fast.url, model),
                    "FALLBACKS": {"gpt-4o": ["u0", "u1"]}},
            "fallback": {**base, "UPSTREAMS": {
                "first": {"base_url": refusing.url, "api_key": KEY, "models": [model]},
                "second": {"base_url": fast.url, "api_key": KEY, "models": [model]}},
                "FALLBACKS": {model: ["first", "second"]},
                "CIRCUIT_BREAKER": {"threshold": 10 ** 9, "cooldown": 1.0, "backend": "db"}},
        }
        # Each configuration's settings, entered once: its clients and pools stay built, as
        # in a server process (switching settings rebuilds them, which is not what we time).
        samples = {name: [] for name in configs}
        contexts = {name: override_settings(OPENAI_DJANGO=value)
                    for name, value in configs.items()}

        for name in configs:  # warm-up: the imports, the first connections
            with contexts[name]:
                _timed_calls(openai_django, model, user, 20)
        batch = 50
        for _ in range(max(1, args.calls // batch)):
            for name in configs:
                with contexts[name]:
                    # Entering the settings rebuilt the clients: the first call of a batch
                    # opens the connections, which a server process does once; not counted.
                    samples[name].extend(_timed_calls(openai_django, model, user, batch)[1:])
        out = {"date": datetime.now().isoformat(timespec="seconds"),
               "load_before": os.getloadavg(), "calls": args.calls,
               "command": " ".join([Path(sys.executable).name, "-m", "bench.upstreams_bench",
                                    *(argv if argv is not None else sys.argv[1:])])}
        for name, values in samples.items():
            out[f"{name}_p50_ms"] = round(statistics.median(values), 3)
            out[f"{name}_p99_ms"] = round(percentile(values, 0.99), 3)
        out["ten_added_p50_ms"] = round(out["ten_p50_ms"] - out["single_p50_ms"], 3)
        out["fallback_added_p50_ms"] = round(out["fallback_p50_ms"] - out["single_p50_ms"], 3)
        # The route alone (CPU): warm memo, and cold (the memo cleared before each).
        with contexts["ten"]:
            invocation = from_kwargs("createChatCompletion", model=model, messages=HELLO,
                                     user=user)
            cfg = upstreams.config()
            n = 20000
            start = time.perf_counter()
            for _ in range(n):
                upstreams.route(invocation)
            out["route_warm_us"] = round((time.perf_counter() - start) / n * 1e6, 3)
            start = time.perf_counter()
            for _ in range(2000):
                cfg.routes.clear()
                upstreams.route(invocation)
            out["route_cold_us"] = round((time.perf_counter() - start) / 2000 * 1e6, 3)
        with contexts["single"]:
            invocation = from_kwargs("createChatCompletion", model=model, messages=HELLO,
                                     user=user)
            start = time.perf_counter()
            for _ in range(20000):
                upstreams.route(invocation)
            out["route_single_us"] = round((time.perf_counter() - start) / 20000 * 1e6, 3)
        out["load_after"] = os.getloadavg()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        for key, value in out.items():
            print(f"{key}: {value}")
        return 0
    finally:
        fast.stop()
        refusing.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _timed_calls(openai_django, model, user, count):
    values = []
    for _ in range(count):
        start = time.perf_counter()
        openai_django.create("createChatCompletion", model=model, messages=HELLO, user=user)
        values.append((time.perf_counter() - start) * 1000)
    return values


if __name__ == "__main__":
    sys.exit(main())
