"""Added latency at c=1 measured with the official SDK's client (the ``openai`` package).

wrk is not what a user runs: the SDK's client (httpx underneath: its own connection pool, its
own way of writing a request and reading the answer) is. So the same chat call is made in a
loop with ``openai.OpenAI(base_url=..., max_retries=0).chat.completions.create``, once against
the gateway and once against the stand-in directly, in alternating rounds of
``latency_seconds`` after a warm-up, each call timed on the client (``perf_counter`` around
``create``, the answer parsed as the SDK parses it). The figures are the medians over rounds of
the per-round p50/p99, and the added ones the medians of the per-round differences, as in
scenario 1 (bench/scenarios.py).

    .venv/bin/python -m bench --only sdk_latency
"""

from __future__ import annotations

import time

from bench.harness import UPSTREAM_KEY
from bench.scenarios import CHAT, _median, _pct


def _client(base_url, api_key):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30.0)


def _loop(client, seconds, failures):
    """``(latencies in ms, errors)`` of back-to-back calls for ``seconds``; the first few
    errors' messages go to ``failures``."""
    latencies, errors = [], 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        try:
            client.chat.completions.create(**CHAT)
        except Exception as exc:
            errors += 1
            if len(failures) < 3:
                cause = exc.__cause__ or exc.__context__
                failures.append(f"{client.base_url}: {type(exc).__name__}: {exc} ({cause!r})"[:300])
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, errors


def sdk_latency(ctx, gateway=None):
    p = ctx.params
    gateway = gateway or ctx.gateway
    via = _client(gateway.url + "/v1", ctx.harness.client_key)
    direct = _client(ctx.upstream.url, UPSTREAM_KEY)
    failures = []
    try:
        _loop(via, p.warmup_seconds, failures)
        _loop(direct, p.warmup_seconds, failures)
        rounds, errors, requests = [], 0, 0
        for _ in range(p.rounds):
            g, g_err = _loop(via, p.latency_seconds, failures)
            d, d_err = _loop(direct, p.latency_seconds, failures)
            errors += g_err + d_err
            requests += len(g) + len(d)
            if not g or not d:
                raise RuntimeError(f"no call answered in a round (gateway {gateway.url}, "
                                   f"direct {ctx.upstream.url}): {failures}")
            rounds.append({"g50": _pct(g, 50), "g99": _pct(g, 99), "d50": _pct(d, 50),
                           "d99": _pct(d, 99), "slow": sum(1 for x in g if x > 20) / len(g)})
    finally:
        via.close()
        direct.close()
    import openai

    return {
        "gateway_p50_ms": _median([r["g50"] for r in rounds]),
        "gateway_p99_ms": _median([r["g99"] for r in rounds]),
        "direct_p50_ms": _median([r["d50"] for r in rounds]),
        "direct_p99_ms": _median([r["d99"] for r in rounds]),
        "added_p50_ms": _median([r["g50"] - r["d50"] for r in rounds]),
        "added_p99_ms": _median([r["g99"] - r["d99"] for r in rounds]),
        "gateway_over_20ms_pct": _median([100 * r["slow"] for r in rounds]),
        "requests": requests,
        "errors": errors,
        "first_errors": failures,
        "rounds": len(rounds),
        "sdk": f"openai {openai.__version__}",
    }
