"""``python -m bench --only limits``: the cost of budgets and rate limits on the hot path.

Two keys of the same SQLite database: the harness's own (no allowance: the "baseline",
which pays only the lookup of allowances, one query) and a second one whose user has an
allowance with every control on and never reached (requests and tokens per minute, a daily
dollar budget, a monthly token budget). The latter is sent to a gateway with
``LIMITS = False`` ("off": nothing checked, the same setup without them) and to two gateways
with the checks on: the database backend of the rate limits, and Redis (``REDIS_URL``, from
``scripts/services env``; skipped without). Latency at c=1 (wrk -c1) and req/s at c=64 are
measured round by round, interleaved: off, baseline, database mode, Redis mode, direct; the
added figures are against "off".
"""

import json
import subprocess
import sys

from bench import scenarios
from bench.harness import ROOT
from bench.loadgen import WrkScript, run_wrk

LIMITED_KEY = "sk-od-benchlim-" + "l" * 37

_SETUP = """
import django
django.setup()
from django.contrib.auth import get_user_model
import openai_django
from openai_django.models import APIKey, KEY_PREFIX, hash_key
raw = {key!r}
user, _ = get_user_model().objects.get_or_create(username="bench-limited")
APIKey.objects.get_or_create(hashed_key=hash_key(raw), defaults={{
    "user": user, "name": "bench-limited", "prefix": raw[: len(KEY_PREFIX) + 4],
    "last4": raw[-4:]}})
openai_django.set_rate_limit(user, requests_per_minute=10**9, tokens_per_minute=2 * 10**9)
openai_django.set_budget(user, daily_usd=10**7, monthly_tokens=10**15)
print("ok")
"""


def _script(ctx, name, key):
    return WrkScript(ctx.workdir, name, body=json.dumps(scenarios.CHAT).encode(),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {key}"})


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def limits(ctx, db, redis_url=None, *, server="granian-wsgi", workers=2, threads=8):
    harness, p = ctx.harness, ctx.params
    out = subprocess.run([sys.executable, "-c", _SETUP.format(key=LIMITED_KEY)], cwd=ROOT,
                         env=harness.django_env(db), capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"setting up the allowance failed:\n{out.stderr[-3000:]}")
    off = harness.start_gateway(db, server=server, workers=workers, threads=threads,
                                name=f"gateway-limits-off-{db.kind}",
                                env={"OPENAI_DJANGO_LIMITS": "0"})
    gateways = {"db": harness.start_gateway(db, server=server, workers=workers,
                                            threads=threads,
                                            name=f"gateway-limits-db-{db.kind}",
                                            env={"OPENAI_DJANGO_RATE_LIMIT_BACKEND": "db"})}
    if redis_url:
        gateways["redis"] = harness.start_gateway(
            db, server=server, workers=workers, threads=threads,
            name=f"gateway-limits-redis-{db.kind}",
            env={"OPENAI_DJANGO_RATE_LIMIT_REDIS_URL": redis_url})
    try:
        base = _script(ctx, "limits-base", harness.client_key)
        limited = _script(ctx, "limits-on", LIMITED_KEY)
        direct = WrkScript(ctx.workdir, "limits-direct", body=json.dumps(scenarios.CHAT).encode(),
                           headers=ctx.direct_headers())
        targets = [("off", off.url + "/v1/chat/completions", limited),
                   ("baseline", ctx.gateway.url + "/v1/chat/completions", base),
                   *[(f"limits_{mode}", g.url + "/v1/chat/completions", limited)
                     for mode, g in gateways.items()],
                   ("direct", ctx.upstream.url + "/chat/completions", direct)]
        for gateway in (off, *gateways.values()):
            scenarios.check_contract(ctx, gateway)  # up, answering, imports done
        for label, url, script in targets:  # every path warm
            result = run_wrk(url, script, seconds=p.warmup_seconds)
            if result.errors:
                raise RuntimeError(f"{label} answered errors in the warm-up: {result}")
        c1 = {label: [] for label, *_ in targets}
        c64 = {label: [] for label, *_ in targets}
        for _ in range(p.rounds):
            for label, url, script in targets:
                c1[label].append(run_wrk(url, script, seconds=p.latency_seconds))
        for _ in range(p.throughput_rounds):
            for label, url, script in targets:
                c64[label].append(run_wrk(url, script, connections=p.throughput_connections,
                                          seconds=p.throughput_seconds))
        figures = {"modes": list(gateways), "rounds": p.rounds,
                   "connections": p.throughput_connections}
        for label in c1:
            figures[f"{label}_p50_ms"] = _median([r.p50_ms for r in c1[label]])
            figures[f"{label}_p99_ms"] = _median([r.p99_ms for r in c1[label]])
            figures[f"{label}_rps_c64"] = _median([r.rps for r in c64[label]])
            figures[f"{label}_errors"] = sum(r.errors for r in c1[label] + c64[label])
        for mode in gateways:
            label = f"limits_{mode}"
            figures[f"added_p50_ms_{mode}"] = _median(
                [a.p50_ms - b.p50_ms for a, b in zip(c1[label], c1["off"])])
            figures[f"added_p99_ms_{mode}"] = _median(
                [a.p99_ms - b.p99_ms for a, b in zip(c1[label], c1["off"])])
            figures[f"rps_ratio_c64_{mode}"] = round(
                _median([a.rps / b.rps for a, b in zip(c64[label], c64["off"])]), 3)
        figures["lookup_added_p50_ms"] = _median(
            [a.p50_ms - b.p50_ms for a, b in zip(c1["baseline"], c1["off"])])
        figures["baseline_added_p50_ms"] = _median(
            [a.p50_ms - b.p50_ms for a, b in zip(c1["baseline"], c1["direct"])])
        return figures
    finally:
        harness.stop_gateway(off)
        for gateway in gateways.values():
            harness.stop_gateway(gateway)
