"""Schemathesis over the bundled specs: the machinery behind ``tests/test_fuzz.py``.

:func:`fuzz` runs, for each operation of a loaded spec, a fixed small number of Hypothesis
examples (schemathesis' positive *and* negative cases, explicit/generate phases only: no
shrinking, no example database, no stateful testing) against a target, within a time budget,
and returns a :class:`Report` (operations covered, cases, statuses, seconds, findings).

Reproducible: each operation's examples are drawn with ``hypothesis.seed(f(seed, label))``,
so one run's seed and an operation's label give the same cases again, whatever other
operations run (see the replay line of :meth:`Report.summary`).

Environment (pytest alone, no option needed):

* ``FUZZ_SEED``: the seed (an integer); default: a fresh random one, printed.
* ``FUZZ_EXAMPLES``: examples per operation (default: the test's own, 3 or 5).
* ``FUZZ_BUDGET``: seconds per spec and target (default 150); operations not reached in time
  are listed as not covered (a warning, not a failure).
* ``FUZZ_OPS``: a regular expression; only operations whose label (``METHOD /path``) or
  ``operationId`` it matches (``re.search``) are fuzzed.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import shlex
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.errors import UnsupportedSchema
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

SPEC_DIR = Path(__file__).resolve().parents[1] / "openai_django" / "spec"
SPECS = {"1.2.0": SPEC_DIR / "openapi.yaml", "2.3.0": SPEC_DIR / "openapi-2.3.0.yaml"}
DEFAULT_BUDGET = 150.0
#: Characters of a request or response body quoted in a finding.
EXCERPT = 400


def env_seed() -> int:
    value = os.environ.get("FUZZ_SEED", "").strip()
    return int(value) if value else random.SystemRandom().randrange(1, 2**32)


def env_examples(default: int) -> int:
    return int(os.environ.get("FUZZ_EXAMPLES") or default)


def env_budget() -> float:
    return float(os.environ.get("FUZZ_BUDGET") or DEFAULT_BUDGET)


@functools.cache
def load(version: str) -> tuple[Any, float]:
    """The schemathesis schema of one bundled spec, and the seconds it took to load."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_path(SPECS[version])
    # The key is the target's own, sent with every case: no generated (or removed)
    # Authorization header, so that the cases are spent on parameters and bodies.
    schema.config.generation.update(with_security_parameters=False)
    return schema, time.monotonic() - started


def is_admin(operation) -> bool:
    """Organization administration: security ``AdminApiKeyAuth`` (not served by default)."""
    return any("AdminApiKeyAuth" in s for s in operation.definition.raw.get("security") or ())


def operations(schema, *, admin: bool | None = None) -> list:
    """The operations of ``schema`` (``admin``: only those / none of those / all), filtered
    by ``FUZZ_OPS``."""
    pattern = os.environ.get("FUZZ_OPS")
    selected = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if admin is not None and is_admin(operation) != admin:
            continue
        op_id = operation.definition.raw.get("operationId", "")
        if pattern and not (re.search(pattern, operation.label) or re.search(pattern, op_id)):
            continue
        selected.append(operation)
    return selected


def op_seed(seed: int, label: str) -> int:
    return zlib.crc32(f"{seed}:{label}".encode())


@dataclass
class Finding:
    """One case a check rejected: what was sent, what came back, how to send it again."""

    kind: str  # e.g. "gateway 5xx", "relayed stand-in 5xx", "stand-in 5xx", "not 404"
    label: str
    status: int | None
    request: str  # "METHOD URL" and a body excerpt
    response: str
    curl: str

    def render(self) -> str:
        return (f"[{self.kind}] {self.label} -> {self.status}\n"
                f"  request:  {self.request}\n  response: {self.response}\n"
                f"  replay:   {self.curl}")


@dataclass
class Report:
    target: str
    version: str
    seed: int
    examples: int
    load_seconds: float
    operations: int = 0
    covered: int = 0
    cases: int = 0
    seconds: float = 0.0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    findings: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # reported, not failing
    not_covered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # an operation's run that raised
    #: operations a generation mode cannot cover (Schemathesis refuses part of the schema,
    #: e.g. a ``not`` below the root in negative mode); reported, not failing
    unsupported: list[str] = field(default_factory=list)

    def replay(self, test: str, label: str | None = None) -> str:
        narrow = f"FUZZ_OPS={shlex.quote('^' + re.escape(label) + '$')} " if label else ""
        return (f"FUZZ_SEED={self.seed} FUZZ_EXAMPLES={self.examples} {narrow}"
                f".venv/bin/python -m pytest 'tests/test_fuzz.py::{test}'")

    def summary(self, test: str) -> str:
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        return (f"fuzz {self.target} {self.version}: seed={self.seed}, {self.covered}/"
                f"{self.operations} operations, {self.cases} cases ({self.examples}/operation), "
                f"{self.seconds:.1f} s (spec loaded in {self.load_seconds:.1f} s); "
                f"statuses {statuses}; {len(self.findings)} failing, {len(self.notes)} noted, "
                f"{len(self.errors)} errors"
                + (f", {len(self.unsupported)} partly unsupported ({'; '.join(self.unsupported)})"
                   if self.unsupported else "")
                + f"\n  replay: {self.replay(test)}")

    def failure(self, test: str) -> str:
        lines = [self.summary(test), ""]
        for finding in self.findings:
            lines += [finding.render(), f"  pytest:   {self.replay(test, finding.label)}"]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def excerpt(value: Any, size: int = EXCERPT) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= size else text[:size] + f"... ({len(text)} chars)"


def is_server_error(case, response: requests.Response) -> bool:
    """Schemathesis' own ``not_a_server_error`` check, as a predicate."""
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except FailureGroup:
        return True
    return False


def describe_request(response: requests.Response) -> str:
    request = response.request
    return f"{request.method} {request.url} body={excerpt(request.body)!s}"


def curl(case, base_url: str, headers: dict[str, str]) -> str:
    try:
        command = case.as_curl_command(headers=headers, base_url=base_url)
    except Exception as exc:
        return f"(no curl command: {exc!r})"
    # The key is filtered out of the command: $KEY stands for it (the run's own).
    return command.replace("'Authorization: [Filtered]'", "\"Authorization: Bearer $KEY\"")


@schemathesis.serializer("application/sdp")
def _sdp(ctx, value):
    """SDP (RFC 8866) is text: today's spec takes a realtime call's offer as
    ``application/sdp``, which schemathesis has no serializer for (a case drawing that
    media type failed the run with SerializationNotPossible, seed 4161693256)."""
    return value if isinstance(value, bytes) else str(value).encode()


#: ``check(case, response) -> Finding | None`` (the finding's curl is filled in by fuzz).
Check = Callable[[Any, requests.Response], "Finding | None"]


def fuzz(report: Report, ops: list, *, base_url: str, headers: dict[str, str],
         check: Check, budget: float, timeout: float = 30.0,
         examples: int | None = None) -> Report:
    """Fuzz ``ops`` against ``base_url`` (``headers`` sent with every case, plus a
    ``User-Agent`` naming the case, which the gateway forwards and the stand-in logs)."""
    examples = examples or report.examples
    session = requests.Session()
    session.trust_env = False  # never through a proxy from the environment
    started = time.monotonic()
    report.operations += len(ops)
    counter = 0

    def run_cases(operation, modes):
        strategy = st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes))

        @hypothesis.seed(op_seed(report.seed, operation.label))
        @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                             suppress_health_check=list(hypothesis.HealthCheck),
                             derandomize=False, print_blob=False)
        @hypothesis.given(case=strategy)
        def run(case):
            nonlocal counter
            counter += 1
            sent = dict(headers, **{"User-Agent": f"openai-django-fuzz/{counter}"})
            report.cases += 1
            try:
                response = case.call(base_url=base_url, session=session, headers=sent,
                                     timeout=timeout, allow_redirects=False)
            except requests.RequestException as exc:
                report.statuses["no answer"] += 1
                report.findings.append(Finding(
                    "no answer", case.operation.label, None,
                    f"{case.method} {case.formatted_path}", excerpt(repr(exc)),
                    curl(case, base_url, sent)))
                return
            report.statuses[response.status_code] += 1
            finding = check(case, response)
            if finding is not None:
                finding.curl = curl(case, base_url, sent)
                (report.notes if finding.kind.startswith("relayed") else
                 report.findings).append(finding)

        run()

    try:
        for operation in ops:
            if time.monotonic() - started > budget:
                report.not_covered.append(operation.label)
                continue
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            try:
                run_cases(operation, modes)
            except UnsupportedSchema as exc:
                # Which mode's draw raised is not said; the positive cases alone are kept
                # (a finding there still fails the run), the gap is reported.
                try:
                    run_cases(operation, modes[:1])
                    report.unsupported.append(f"{operation.label} negative cases: {exc}")
                except UnsupportedSchema as positive:
                    report.unsupported.append(f"{operation.label} not fuzzed: {positive}")
                    continue
                except Exception as other:
                    report.errors.append(f"{operation.label}: {excerpt(repr(other), 300)}")
            except Exception as exc:  # generation (or a check) failed for this operation
                report.errors.append(f"{operation.label}: {excerpt(repr(exc), 300)}")
            report.covered += 1
    finally:
        session.close()
        report.seconds += time.monotonic() - started
    return report


