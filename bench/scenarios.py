"""The benchmark scenarios. Each takes a :class:`Context` and returns a dict of figures.

Every comparison is measured side by side in one run: the gateway and the same stand-in upstream
called directly are loaded in alternation (gateway, direct, gateway, direct...), after a warm-up,
several rounds, and the figure is the median over rounds of the per-round figure (for "added"
figures: the median of the per-round differences, so a slow moment of the machine hits both
sides of a pair).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, UPSTREAM_KEY
from bench.loadgen import SSEConnection, WrkScript, one_stream, run_wrk

log = logging.getLogger("bench.scenarios")

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
# Today's API: a recorded createResponse (the Responses kind: input items, output items, usage
# with cached and reasoning tokens).
RESPONSE = {"model": "gpt-4o-mini", "input": "Say hello"}


@dataclass
class Params:
    """How long and how often: ``full`` for the published table, ``quick`` for a smoke run."""

    rounds: int = 5
    latency_seconds: float = 3.0
    throughput_rounds: int = 3
    throughput_seconds: float = 5.0
    throughput_connections: int = 64
    ttfe_streams: int = 100
    gap_streams: int = 3
    gap_events: int = 20
    gap_ms: float = 20.0
    slow_stream_counts: tuple = (250, 500, 1000, 1500, 2000)
    slow_stream_seconds: float = 10.0
    slow_stream_events: int = 20
    large_repeats: int = 5
    large_kinds: tuple = ("prompt_100kb", "image_4mb", "embeddings_2048")
    warmup_seconds: float = 1.0

    @classmethod
    def quick(cls):
        return cls(rounds=1, latency_seconds=1, throughput_rounds=1, throughput_seconds=1,
                   throughput_connections=8, ttfe_streams=5, gap_streams=1, gap_events=4,
                   gap_ms=20.0, slow_stream_counts=(10,), slow_stream_seconds=0.5,
                   slow_stream_events=3, large_repeats=1, large_kinds=("prompt_100kb",),
                   warmup_seconds=0.2)


@dataclass
class Context:
    harness: object
    gateway: object  # the gateway under test (recording on)
    params: Params
    extra: dict = field(default_factory=dict)

    @property
    def upstream(self):
        return self.harness.upstream

    @property
    def workdir(self):
        return self.harness.workdir

    def gw_headers(self, content_type="application/json"):
        # BENCH_GATEWAY_HEADERS (a JSON object) adds headers to the gateway's requests only,
        # e.g. the OpenAI-Django-Tags/-Metadata/-Session labels, to measure what they cost.
        extra = json.loads(os.environ.get("BENCH_GATEWAY_HEADERS") or "{}")
        return {"Content-Type": content_type,
                "Authorization": f"Bearer {self.harness.client_key}", **extra}

    def direct_headers(self, content_type="application/json"):
        return {"Content-Type": content_type, "Authorization": f"Bearer {UPSTREAM_KEY}"}


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 3)


def _scripts(ctx, name, body, *, content_type="application/json", gateway=None):
    return (WrkScript(ctx.workdir, f"{name}-gw", body=body, headers=ctx.gw_headers(content_type)),
            WrkScript(ctx.workdir, f"{name}-direct", body=body,
                      headers=ctx.direct_headers(content_type)))


def check_contract(ctx, gateway=None):
    """One call before measuring: the gateway answers 200 with ``X-Call-Id``."""
    gateway = gateway or ctx.gateway
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                     headers=ctx.gw_headers())
        response = conn.getresponse()
        response.read()
        call_id = response.getheader("X-Call-Id")
    finally:
        conn.close()
    if response.status != 200 or not call_id:
        raise RuntimeError(f"gateway {gateway.name} answered {response.status} without a call "
                           f"id; log:\n{gateway.log_tail()}")
    return call_id


# -- 1. added latency at c=1 ---------------------------------------------------------------


def latency(ctx, gateway=None, name="chat", path="/chat/completions", body=None):
    """Added latency at c=1 of one operation (chat by default), gateway and direct
    interleaved round by round."""
    p = ctx.params
    gateway = gateway or ctx.gateway
    gw_script, direct_script = _scripts(ctx, name, json.dumps(body or CHAT).encode())
    gw_url = gateway.url + "/v1" + path
    direct_url = ctx.upstream.url + path
    run_wrk(gw_url, gw_script, seconds=p.warmup_seconds)
    run_wrk(direct_url, direct_script, seconds=p.warmup_seconds)
    rounds = []
    for _ in range(p.rounds):
        g = run_wrk(gw_url, gw_script, seconds=p.latency_seconds)
        d = run_wrk(direct_url, direct_script, seconds=p.latency_seconds)
        rounds.append({"gateway": g, "direct": d})
    return _latency_summary(rounds)


def _latency_summary(rounds):
    g = [r["gateway"] for r in rounds]
    d = [r["direct"] for r in rounds]
    return {
        "gateway_p50_ms": _median([x.p50_ms for x in g]),
        "gateway_p99_ms": _median([x.p99_ms for x in g]),
        "direct_p50_ms": _median([x.p50_ms for x in d]),
        "direct_p99_ms": _median([x.p99_ms for x in d]),
        "added_p50_ms": _median([a.p50_ms - b.p50_ms for a, b in zip(g, d)]),
        "added_p99_ms": _median([a.p99_ms - b.p99_ms for a, b in zip(g, d)]),
        "gateway_rps_c1": _median([x.rps for x in g]),
        "requests": sum(x.requests for x in g) + sum(x.requests for x in d),
        "errors": sum(x.errors for x in g) + sum(x.errors for x in d),
        "rounds": len(rounds),
    }


# -- 2. throughput at saturation -----------------------------------------------------------


def _saturate(p, targets):
    """wrk at saturation on each ``(label, url, script, server)`` target, interleaved round
    by round after a warm-up: ``(results by label, figures)`` with each label's median req/s,
    p50, p99, errors and CPU per request (of the server's processes)."""
    c = p.throughput_connections
    for _, url, script, _ in targets:
        run_wrk(url, script, connections=c, seconds=p.warmup_seconds)
    figures = {label: [] for label, *_ in targets}
    cpu = {label: [] for label, *_ in targets}
    for _ in range(p.throughput_rounds):
        for label, url, script, server in targets:
            before = server.cpu_seconds() if server else None
            result = run_wrk(url, script, connections=c, seconds=p.throughput_seconds)
            figures[label].append(result)
            if server:
                cpu[label].append((server.cpu_seconds() - before) / max(result.requests, 1)
                                  * 1e6)
    out = {"connections": c, "rounds": p.throughput_rounds}
    for label, results in figures.items():
        out[f"{label}_rps"] = _median([r.rps for r in results])
        out[f"{label}_p50_ms"] = _median([r.p50_ms for r in results])
        out[f"{label}_p99_ms"] = _median([r.p99_ms for r in results])
        out[f"{label}_errors"] = sum(r.errors for r in results)
        if cpu[label]:
            out[f"{label}_cpu_us_per_request"] = _median(cpu[label])
    return figures, out


def throughput(ctx, unrecorded=None, others=None):
    """Requests per second with full recording, with recording off, and direct: interleaved."""
    p = ctx.params
    body = json.dumps(CHAT).encode()
    gw_script, direct_script = _scripts(ctx, "tput", body)
    targets = [("recorded", ctx.gateway.url + "/v1/chat/completions", gw_script, ctx.gateway)]
    if unrecorded is not None:
        targets.append(("unrecorded", unrecorded.url + "/v1/chat/completions", gw_script,
                        unrecorded))
    for label, server in (others or {}).items():
        targets.append((label, server.url + "/v1/chat/completions", gw_script, server))
    targets.append(("direct", ctx.upstream.url + "/chat/completions", direct_script, None))
    figures, out = _saturate(p, targets)
    if unrecorded is not None:
        out["recorded_vs_unrecorded"] = _median(
            [a.rps / b.rps for a, b in zip(figures["recorded"], figures["unrecorded"])
             if b.rps])
    return out


# -- 3. streaming: time to first event, gaps -----------------------------------------------


def _stream_body(ctx):
    return json.dumps({**CHAT, "stream": True}).encode()


async def _sequential_streams(url, headers, body, count):
    conn = SSEConnection(url, headers)
    try:
        results = []
        for _ in range(count):
            results.append(await conn.stream(body, timeout=60))
        return results
    finally:
        conn.close()


def streaming(ctx, path="/chat/completions", body=None):
    """Time to first event and event gaps of one streamed operation (chat by default),
    gateway and direct interleaved round by round."""
    p = ctx.params
    body = body or _stream_body(ctx)
    gw_url = ctx.gateway.url + "/v1" + path
    direct_url = ctx.upstream.url + path
    gw_h = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    d_h = {"Authorization": f"Bearer {UPSTREAM_KEY}"}

    # Time to first event: short streams, many of them, on a keep-alive connection.
    ctx.harness.configure_upstream(events=2, gap_ms=0, ttft_ms=0)
    asyncio.run(_sequential_streams(gw_url, gw_h, body, 5))
    asyncio.run(_sequential_streams(direct_url, d_h, body, 5))
    ttfe = {"gateway": [], "direct": []}
    errors = 0
    added = []
    for _ in range(p.rounds):
        g = asyncio.run(_sequential_streams(gw_url, gw_h, body, p.ttfe_streams))
        d = asyncio.run(_sequential_streams(direct_url, d_h, body, p.ttfe_streams))
        errors += sum(not r.ok for r in g) + sum(not r.ok for r in d)
        gv = [r.ttfe_ms for r in g if r.ok]
        dv = [r.ttfe_ms for r in d if r.ok]
        ttfe["gateway"].append(gv)
        ttfe["direct"].append(dv)
        if gv and dv:
            added.append(statistics.median(gv) - statistics.median(dv))
    all_g = [x for xs in ttfe["gateway"] for x in xs]
    all_d = [x for xs in ttfe["direct"] for x in xs]

    # Gaps: the upstream sends an event every gap_ms; the client must see the same rhythm.
    ctx.harness.configure_upstream(events=p.gap_events, gap_ms=p.gap_ms, ttft_ms=0)
    gaps = {"gateway": [], "direct": []}
    for _ in range(p.rounds):
        for label, url, headers in (("gateway", gw_url, gw_h), ("direct", direct_url, d_h)):
            for result in asyncio.run(_sequential_streams(url, headers, body, p.gap_streams)):
                if not result.ok:
                    errors += 1
                gaps[label].extend(result.gaps_ms())
    ctx.harness.configure_upstream(events=8, gap_ms=0, ttft_ms=0)
    dev = {k: [abs(g - p.gap_ms) for g in v] for k, v in gaps.items()}
    coalesced = {k: sum(1 for g in v if g < p.gap_ms / 4) for k, v in gaps.items()}
    return {
        "ttfe_gateway_p50_ms": _pct(all_g, 50), "ttfe_gateway_p99_ms": _pct(all_g, 99),
        "ttfe_direct_p50_ms": _pct(all_d, 50), "ttfe_direct_p99_ms": _pct(all_d, 99),
        "ttfe_added_p50_ms": _median(added),
        "gap_upstream_ms": p.gap_ms, "gaps_measured": len(gaps["gateway"]),
        "gap_gateway_p50_ms": _pct(gaps["gateway"], 50),
        "gap_direct_p50_ms": _pct(gaps["direct"], 50),
        "gap_gateway_dev_p50_ms": _pct(dev["gateway"], 50),
        "gap_gateway_dev_p99_ms": _pct(dev["gateway"], 99),
        "gap_gateway_dev_max_ms": _pct(dev["gateway"], 100),
        "gap_direct_dev_p99_ms": _pct(dev["direct"], 99),
        "coalesced_gateway": coalesced["gateway"], "coalesced_direct": coalesced["direct"],
        "errors": errors,
    }


# -- 4. many slow streams at once -----------------------------------------------------------


async def _many_streams(url, headers, body, count, ramp_seconds, timeout):
    async def one(index):
        await asyncio.sleep(ramp_seconds * index / max(count, 1))
        return await one_stream(url, headers, body, timeout=timeout)

    return await asyncio.gather(*(one(i) for i in range(count)))


def slow_streams(ctx, gateway=None):
    """N concurrent streams of ``slow_stream_seconds`` each; the largest N with zero errors."""
    p = ctx.params
    gateway = gateway or ctx.gateway
    body = _stream_body(ctx)
    events = p.slow_stream_events
    gap = p.slow_stream_seconds * 1000 / events
    ctx.harness.configure_upstream(events=events, gap_ms=gap, ttft_ms=0)
    headers = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    runs = []
    best = 0
    try:
        for count in p.slow_stream_counts:
            baseline_rss = gateway.rss_kb()
            peak = [baseline_rss]
            stop = threading.Event()

            def sample(peak=peak, stop=stop):
                while not stop.wait(0.25):
                    peak[0] = max(peak[0], gateway.rss_kb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            ramp = min(2.0, p.slow_stream_seconds / 4)
            results = asyncio.run(_many_streams(gateway.url + "/v1/chat/completions", headers,
                                                body, count, ramp,
                                                timeout=p.slow_stream_seconds * 3 + 30))
            elapsed = time.perf_counter() - started
            stop.set()
            sampler.join()
            failures = [r for r in results if not r.ok]
            kinds = {}
            for r in failures:
                key = r.error or (f"status {r.status}" if r.status != 200 else "no [DONE]")
                kinds[key] = kinds.get(key, 0) + 1
            durations = [(r.event_times[-1] - r.event_times[0]) for r in results
                         if r.ok and len(r.event_times) > 1]
            run = {"streams": count, "errors": len(failures), "error_kinds": kinds,
                   "seconds": round(elapsed, 2),
                   "stream_seconds_p50": _pct(durations, 50),
                   "ttfe_p50_ms": _pct([r.ttfe_ms for r in results if r.ok], 50),
                   "ttfe_max_ms": _pct([r.ttfe_ms for r in results if r.ok], 100),
                   "stream_seconds_max": _pct(durations, 100),
                   "rss_before_mb": round(baseline_rss / 1024, 1),
                   "rss_peak_mb": round(peak[0] / 1024, 1),
                   "rss_per_stream_kb": round((peak[0] - baseline_rss) / count, 1)}
            runs.append(run)
            log.info("slow streams: %s", run)
            if failures:
                break
            best = count
            if not gateway.proc or gateway.proc.poll() is not None:
                break
            time.sleep(1.0)
    finally:
        ctx.harness.configure_upstream(events=8, gap_ms=0, ttft_ms=0)
    return {"largest_zero_error_streams": best, "stream_seconds": p.slow_stream_seconds,
            "tried": list(p.slow_stream_counts), "runs": runs}


# -- 5. large bodies ------------------------------------------------------------------------


def _png_of_size(size):
    """A valid PNG padded with a private ancillary chunk to ``size`` bytes."""
    signature = b"\x89PNG\r\n\x1a\n"

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress((b"\x00" + b"\x80\x40\x20" * 16) * 16))
    iend = chunk(b"IEND", b"")
    pad = size - len(signature) - len(ihdr) - len(idat) - len(iend) - 12
    filler = chunk(b"bnCh", os.urandom(16) * (max(pad, 0) // 16) + b"\0" * (max(pad, 0) % 16))
    return signature + ihdr + filler + idat + iend


def _multipart(fields, files, boundary="benchboundary7f3a9c"):
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    for name, (filename, data, content_type) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                   + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def large_cases(kinds):
    cases = {}
    if "prompt_100kb" in kinds:
        words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 2000)[:100 * 1024]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words}]}
        cases["prompt_100kb"] = ("/chat/completions", json.dumps(body).encode(),
                                 "application/json")
    if "image_4mb" in kinds:
        image = _png_of_size(4_000_000)
        data, content_type = _multipart(
            {"prompt": "a lighthouse at dusk", "size": "256x256", "response_format": "b64_json"},
            {"image": ("image.png", image, "image/png")})
        cases["image_4mb"] = ("/images/edits", data, content_type)
    if "embeddings_2048" in kinds:
        body = {"model": "text-embedding-3-small",
                "input": [f"document number {i} about benchmarks" for i in range(2048)]}
        cases["embeddings_2048"] = ("/embeddings", json.dumps(body).encode(), "application/json")
    return cases


def _timed_post(port, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return response.status, len(payload), elapsed
    finally:
        conn.close()


def large_bodies(ctx):
    p = ctx.params
    out = {}
    upstream_port = ctx.upstream.port
    for name, (path, body, content_type) in large_cases(p.large_kinds).items():
        gw = (ctx.gateway.port, "/v1" + path, ctx.gw_headers(content_type))
        direct = (upstream_port, "/v1" + path, ctx.direct_headers(content_type))
        _timed_post(*gw[:2], body, gw[2])
        _timed_post(*direct[:2], body, direct[2])
        g_times, d_times, errors, size = [], [], 0, 0
        for _ in range(p.large_repeats):
            status, size, ms = _timed_post(gw[0], gw[1], body, gw[2])
            errors += status != 200
            g_times.append(ms)
            status, _, ms = _timed_post(direct[0], direct[1], body, direct[2])
            errors += status != 200
            d_times.append(ms)
        out[name] = {"request_bytes": len(body), "response_bytes": size,
                     "gateway_p50_ms": _median(g_times), "direct_p50_ms": _median(d_times),
                     "added_p50_ms": _median([a - b for a, b in zip(g_times, d_times)]),
                     "errors": errors, "repeats": p.large_repeats}
    return out


# -- 6. SQLite and PostgreSQL ----------------------------------------------------------------


def databases(ctx, gateways):
    """Latency at c=1 and throughput for each database's gateway, interleaved with direct."""
    p = ctx.params
    body = json.dumps(CHAT).encode()
    gw_script, direct_script = _scripts(ctx, "dbs", body)
    direct_url = ctx.upstream.url + "/chat/completions"
    urls = {kind: g.url + "/v1/chat/completions" for kind, g in gateways.items()}
    for url in urls.values():
        run_wrk(url, gw_script, seconds=p.warmup_seconds)
    lat = {kind: [] for kind in urls}
    lat_direct = []
    for _ in range(p.rounds):
        for kind, url in urls.items():
            lat[kind].append(run_wrk(url, gw_script, seconds=p.latency_seconds))
        lat_direct.append(run_wrk(direct_url, direct_script, seconds=p.latency_seconds))
    tput = {kind: [] for kind in urls}
    c = p.throughput_connections
    for _ in range(p.throughput_rounds):
        for kind, url in urls.items():
            tput[kind].append(run_wrk(url, gw_script, connections=c,
                                      seconds=p.throughput_seconds))
    out = {}
    for kind in urls:
        out[kind] = {
            "added_p50_ms": _median([a.p50_ms - b.p50_ms for a, b in zip(lat[kind], lat_direct)]),
            "added_p99_ms": _median([a.p99_ms - b.p99_ms for a, b in zip(lat[kind], lat_direct)]),
            "gateway_p50_ms": _median([x.p50_ms for x in lat[kind]]),
            "rps": _median([x.rps for x in tput[kind]]),
            "errors": sum(x.errors for x in lat[kind] + tput[kind]),
        }
    out["direct_p50_ms"] = _median([x.p50_ms for x in lat_direct])
    return out


def tail(ctx, gateways, connections=(32, 64)):
    """The tail under load: p50 and p99 of recorded chat calls at each of ``connections`` for
    each database's gateway (``{"sqlite": gateway, "postgres": ...}``), interleaved round by
    round; the p99/p50 ratio is the median of the per-round ratios."""
    p = ctx.params
    body = json.dumps(CHAT).encode()
    gw_script, _ = _scripts(ctx, "tail", body)
    urls = {kind: g.url + "/v1/chat/completions" for kind, g in gateways.items()}
    for url in urls.values():
        run_wrk(url, gw_script, connections=max(connections), seconds=p.warmup_seconds)
    runs = {(kind, c): [] for kind in urls for c in connections}
    cpu = {key: [] for key in runs}
    for _ in range(p.throughput_rounds):
        for c in connections:
            for kind, url in urls.items():
                server = gateways[kind]
                before = server.cpu_seconds()
                result = run_wrk(url, gw_script, connections=c, seconds=p.throughput_seconds)
                runs[kind, c].append(result)
                cpu[kind, c].append((server.cpu_seconds() - before) / max(result.requests, 1)
                                    * 1e6)
    out = {"connections": list(connections), "rounds": p.throughput_rounds}
    for (kind, c), results in runs.items():
        prefix = f"{kind}_c{c}"
        out[f"{prefix}_rps"] = _median([r.rps for r in results])
        out[f"{prefix}_p50_ms"] = _median([r.p50_ms for r in results])
        out[f"{prefix}_p99_ms"] = _median([r.p99_ms for r in results])
        out[f"{prefix}_p99_over_p50"] = _median([r.p99_ms / r.p50_ms for r in results
                                                 if r.p50_ms])
        out[f"{prefix}_cpu_us_per_request"] = _median(cpu[kind, c])
        out[f"{prefix}_errors"] = sum(r.errors for r in results)
    return out


# -- 7, 8. hooks to the Celery and admin benchmarks -----------------------------------------


def external(ctx, module, db, args=(), timeout=1800):
    """Run ``python -m bench.<module> --json OUT [args]`` against ``db``; its figures.

    The contract of a hooked benchmark: it reads ``DATABASE_URL`` (and the other settings) from
    the environment the harness gives every Django process, writes one JSON object of figures
    to the ``--json`` path, and exits 0.
    """
    path = ROOT / "bench" / f"{module}.py"
    if not path.exists():
        return {"skipped": f"bench/{module}.py is not there yet"}
    out_path = Path(ctx.workdir) / f"{module}.json"
    env = ctx.harness.django_env(db)
    cmd = [sys.executable, "-m", f"bench.{module}", "--json", str(out_path), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr[-1500:]}"}
    try:
        return json.loads(out_path.read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"no JSON figures: {exc}"}


# -- ASGI beside WSGI: the same figures for both servers, interleaved round by round ---------


def compare_latency(ctx, gateways, name="chat", path="/chat/completions", body=None):
    """Added latency at c=1 of each gateway in ``gateways`` ({label: server}), each round
    loading every gateway and then the stand-in directly; ``<label>_added_p50_ms`` etc."""
    p = ctx.params
    gw_script, direct_script = _scripts(ctx, f"cmp-{name}", json.dumps(body or CHAT).encode())
    urls = {label: g.url + "/v1" + path for label, g in gateways.items()}
    direct_url = ctx.upstream.url + path
    for url in urls.values():
        run_wrk(url, gw_script, seconds=p.warmup_seconds)
    run_wrk(direct_url, direct_script, seconds=p.warmup_seconds)
    rounds = {label: [] for label in urls}
    cpu = {label: [] for label in urls}
    for _ in range(p.rounds):
        measured = {}
        for label, url in urls.items():
            before = gateways[label].cpu_seconds()
            measured[label] = run_wrk(url, gw_script, seconds=p.latency_seconds)
            cpu[label].append((gateways[label].cpu_seconds() - before)
                              / max(measured[label].requests, 1) * 1e6)
        d = run_wrk(direct_url, direct_script, seconds=p.latency_seconds)
        for label, g in measured.items():
            rounds[label].append({"gateway": g, "direct": d})
    out = {"rounds": p.rounds}
    for label in urls:
        # CPU of the gateway's processes per request at c=1: steadier than wall-clock
        # latency on a shared machine.
        out[f"{label}_cpu_us_per_request"] = _median(cpu[label])
    for label, pairs in rounds.items():
        summary = _latency_summary(pairs)
        for key in ("gateway_p50_ms", "gateway_p99_ms", "added_p50_ms", "added_p99_ms",
                    "gateway_rps_c1"):
            out[f"{label}_{key.removeprefix('gateway_')}"] = summary[key]
        out[f"{label}_errors"] = sum(x["gateway"].errors for x in pairs)
    direct = [x["direct"] for x in next(iter(rounds.values()))]
    out["direct_p50_ms"] = _median([x.p50_ms for x in direct])
    out["direct_p99_ms"] = _median([x.p99_ms for x in direct])
    out["errors"] = sum(out[f"{label}_errors"] for label in urls) + sum(x.errors for x in direct)
    return out


def compare_throughput(ctx, gateways):
    """Requests per second at saturation (recording on) of each gateway and direct,
    interleaved; ``asgi_vs_wsgi``: the median over rounds of the per-round ratio."""
    p = ctx.params
    gw_script, direct_script = _scripts(ctx, "cmp-tput", json.dumps(CHAT).encode())
    targets = [(label, g.url + "/v1/chat/completions", gw_script, g)
               for label, g in gateways.items()]
    targets.append(("direct", ctx.upstream.url + "/chat/completions", direct_script, None))
    figures, out = _saturate(p, targets)
    for label in ("asgi", "asgi_plain", "asgi_django"):
        if label in figures and "wsgi" in figures:
            out[f"{label}_vs_wsgi"] = _median([a.rps / b.rps for a, b in
                                               zip(figures[label], figures["wsgi"]) if b.rps])
    out["errors"] = sum(out[f"{label}_errors"] for label in figures)
    return out


def compare_streaming(ctx, gateways):
    """Time to first event (2-event streams) and event gaps (``gap_events`` paced
    ``gap_ms`` upstream) of each gateway beside direct, interleaved round by round."""
    p = ctx.params
    body = _stream_body(ctx)
    d_h = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    gw_h = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    targets = [(label, g.url + "/v1/chat/completions", gw_h) for label, g in gateways.items()]
    targets.append(("direct", ctx.upstream.url + "/chat/completions", d_h))
    labels = [t[0] for t in targets]
    errors = 0
    try:
        ctx.harness.configure_upstream(events=2, gap_ms=0, ttft_ms=0)
        for _, url, headers in targets:
            asyncio.run(_sequential_streams(url, headers, body, 5))
        ttfe = {label: [] for label in labels}
        medians = {label: [] for label in labels}
        for _ in range(p.rounds):
            for label, url, headers in targets:
                results = asyncio.run(_sequential_streams(url, headers, body, p.ttfe_streams))
                errors += sum(not r.ok for r in results)
                values = [r.ttfe_ms for r in results if r.ok]
                ttfe[label].extend(values)
                medians[label].append(statistics.median(values) if values else None)
        ctx.harness.configure_upstream(events=p.gap_events, gap_ms=p.gap_ms, ttft_ms=0)
        gaps = {label: [] for label in labels}
        for _ in range(p.rounds):
            for label, url, headers in targets:
                for r in asyncio.run(_sequential_streams(url, headers, body, p.gap_streams)):
                    errors += not r.ok
                    gaps[label].extend(r.gaps_ms())
    finally:
        ctx.harness.configure_upstream(events=8, gap_ms=0, ttft_ms=0)
    out = {"gap_upstream_ms": p.gap_ms, "errors": errors}
    for label in labels:
        dev = [abs(g - p.gap_ms) for g in gaps[label]]
        out[f"{label}_ttfe_p50_ms"] = _pct(ttfe[label], 50)
        out[f"{label}_ttfe_p99_ms"] = _pct(ttfe[label], 99)
        out[f"{label}_gap_p50_ms"] = _pct(gaps[label], 50)
        out[f"{label}_gap_dev_p50_ms"] = _pct(dev, 50)
        out[f"{label}_gap_dev_p99_ms"] = _pct(dev, 99)
        out[f"{label}_gap_dev_max_ms"] = _pct(dev, 100)
        out[f"{label}_coalesced"] = sum(1 for g in gaps[label] if g < p.gap_ms / 4)
        out[f"{label}_gaps_measured"] = len(gaps[label])
        if label != "direct":
            out[f"{label}_ttfe_added_p50_ms"] = _median(
                [a - b for a, b in zip(medians[label], medians["direct"])
                 if a is not None and b is not None])
    return out


# -- the soak: one ASGI worker process holding N long streams at once ------------------------


@dataclass
class SoakParams:
    streams: int = 10_000
    seconds: float = 60.0
    interval_ms: float = 500.0
    ramp: float = None  # seconds over which the streams open; default min(20, seconds / 3)
    shares: int = 2  # load generator processes
    http: str = "2"  # the gateway's protocol to the upstream: "2" (h2c) or "1.1"

    def ramp_seconds(self):
        return self.ramp if self.ramp is not None else min(20.0, self.seconds / 3)


def count_calls(ctx, db):
    """The calls in ``db`` by ``status/outcome`` (a Django process of the harness's)."""
    out = subprocess.run([sys.executable, "-m", "bench.soakgen", "--count"], cwd=ROOT,
                         env=ctx.harness.django_env(db), capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"counting calls failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def soak(ctx, gateway, db, sp):
    """``sp.streams`` concurrent streams of ``sp.seconds`` (an event every
    ``sp.interval_ms``) through one gateway process, opened over a ramp by ``sp.shares``
    load generator processes; the gateway's RSS, fds and CPU sampled every 0.5 s; the event
    gap deviation at the client while all streams were open; the records counted at the end."""
    from bench.harness import fd_limits, tree_cpu_seconds
    from bench.soakgen import read_shares

    events = max(2, round(sp.seconds * 1000 / sp.interval_ms))
    ramp = sp.ramp_seconds()
    ctx.harness.configure_upstream(events=events, gap_ms=sp.interval_ms, ttft_ms=0)
    headers = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    body = _stream_body(ctx)
    upstream_pid = ctx.upstream.pid
    try:
        # Warm-up: a few short streams at once, so the pools and imports are in place.
        ctx.harness.configure_upstream(events=2, gap_ms=0, ttft_ms=0)
        asyncio.run(_many_streams(gateway.url + "/v1/chat/completions", headers, body, 20,
                                  0.2, timeout=30))
        ctx.harness.configure_upstream(events=events, gap_ms=sp.interval_ms, ttft_ms=0)
        time.sleep(1.0)
        before = count_calls(ctx, db)
        idle = {"rss_kb": gateway.rss_kb(), "fds": gateway.fds()}
        soft, hard = fd_limits(gateway.proc.pid)
        t0 = time.monotonic() + 1.5  # the generators' start-up
        plateau = (t0 + ramp + 1.0, t0 + sp.seconds - 1.0)
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), gateway.rss_kb(), gateway.fds(),
                                gateway.cpu_seconds(), tree_cpu_seconds(upstream_pid)))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prefix = os.path.join(ctx.workdir, "soak")
        procs = []
        for share in range(sp.shares):
            cmd = [sys.executable, "-m", "bench.soakgen", "--url",
                   gateway.url + "/v1/chat/completions", "--key", ctx.harness.client_key,
                   "--streams", str(sp.streams), "--share", str(share), "--shares",
                   str(sp.shares), "--t0", repr(t0), "--ramp", str(ramp), "--interval-ms",
                   str(sp.interval_ms), "--events", str(events), "--plateau",
                   repr(plateau[0]), repr(plateau[1]), "--timeout", str(sp.seconds * 3 + 60),
                   "--out", f"{prefix}-{share}"]
            procs.append(subprocess.Popen(cmd, cwd=str(ROOT), env={**os.environ,
                                                                   "PYTHONPATH": str(ROOT)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = time.monotonic() + ramp + sp.seconds * 4 + 120
        gen_errors = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                gen_errors.append(err.decode("utf-8", "replace")[-1500:])
        ended = time.monotonic()
        # The record of a stream is finished just after its last event reached the client.
        settle_deadline = time.monotonic() + 120
        while True:
            after = count_calls(ctx, db)
            running = sum(n for k, n in after.items() if k.startswith(("running", "queued")))
            if running == 0 or time.monotonic() > settle_deadline:
                break
            time.sleep(1.0)
        settled = time.monotonic() - ended
        stop.set()
        sampler.join()
    finally:
        ctx.harness.configure_upstream(events=8, gap_ms=0, ttft_ms=0)
    if gen_errors:
        raise RuntimeError("load generator failed: " + " | ".join(gen_errors))
    summaries, deviations = read_shares(prefix, sp.shares)
    kinds = {}
    for s in summaries:
        for k, n in s["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    in_plateau = [x for x in samples if plateau[0] <= x[0] <= plateau[1]]
    plateau_s = (in_plateau[-1][0] - in_plateau[0][0]) if len(in_plateau) > 1 else 0
    rss_plateau = statistics.median(x[1] for x in in_plateau) if in_plateau else None
    new = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    succeeded = sum(n for k, n in new.items() if k.startswith("succeeded"))
    dev = sorted(deviations)
    log_text = gateway.log_tail(200_000)
    out = {
        "streams": sp.streams, "stream_seconds": sp.seconds, "interval_ms": sp.interval_ms,
        "events_per_stream": events, "ramp_seconds": ramp, "generators": sp.shares,
        "server": gateway.extra.get("server"), "workers": gateway.extra.get("workers"),
        "ok": sum(s["ok"] for s in summaries),
        "errors": sum(s["errors"] for s in summaries), "error_kinds": kinds,
        "short_streams": sum(s["short"] for s in summaries),
        "events_received": sum(s["events"] for s in summaries),
        "most_open_at_client": sum(s["most_open"] for s in summaries),
        "ttfe_p50_ms": _median([s["ttfe_p50_ms"] for s in summaries]),
        "ttfe_max_ms": max((s["ttfe_max_ms"] or 0) for s in summaries),
        "stream_seconds_p50": _median([s["duration_p50_s"] for s in summaries]),
        "plateau_seconds": round(plateau_s, 1),
        "rss_idle_mb": round(idle["rss_kb"] / 1024, 1),
        "rss_plateau_mb": round(rss_plateau / 1024, 1) if rss_plateau else None,
        "rss_peak_mb": round(max(x[1] for x in samples) / 1024, 1) if samples else None,
        "rss_per_stream_kb": (round((rss_plateau - idle["rss_kb"]) / sp.streams, 2)
                              if rss_plateau else None),
        "fds_idle": idle["fds"], "fds_peak": max((x[2] for x in samples), default=None),
        "fd_limit_soft": soft, "fd_limit_hard": hard,
        # A socket a stream for the client, and for the upstream one a stream (HTTP/1.1) or
        # one per MAX_CONCURRENT_STREAMS streams (HTTP/2: the stand-in allows 100).
        "upstream_http": sp.http,
        "fds_needed": (2 * sp.streams if sp.http == "1.1" else sp.streams + -(-sp.streams // 100))
        + idle["fds"],
        "cpu_cores_plateau": (round((in_plateau[-1][3] - in_plateau[0][3]) / plateau_s, 3)
                              if plateau_s else None),
        "upstream_cpu_cores_plateau": (round((in_plateau[-1][4] - in_plateau[0][4])
                                             / plateau_s, 3) if plateau_s else None),
        "client_cpu_seconds": round(sum(s["cpu_seconds"] for s in summaries), 1),
        # The gateway's and the stand-in's CPU over the whole soak (ramp, streams, records)
        # per event the clients received: robust to a plateau that a loaded machine shifts.
        "cpu_us_per_event_all_in": (round((samples[-1][3] - samples[0][3]) * 1e6 / max(
            1, sum(s["events"] for s in summaries)), 1) if len(samples) > 1 else None),
        "upstream_cpu_us_per_event_all_in": (round((samples[-1][4] - samples[0][4]) * 1e6
                                                   / max(1, sum(s["events"] for s in summaries)),
                                                   1) if len(samples) > 1 else None),
        "gaps_measured": len(dev),
        "gap_dev_p50_ms": _pct(dev, 50), "gap_dev_p99_ms": _pct(dev, 99),
        "gap_dev_max_ms": _pct(dev, 100),
        "records": new, "records_succeeded": succeeded,
        "records_not_succeeded": sp.streams - succeeded,
        "records_settle_seconds": round(settled, 1),
        "gateway_log_emfile": log_text.count("Too many open files"),
        "gateway_log_tracebacks": log_text.count("Traceback"),
        "gateway_alive": gateway.proc is not None and gateway.proc.poll() is None,
    }
    if out["gateway_log_tracebacks"] or out["errors"]:
        out["gateway_log_tail"] = log_text[-2500:]
    return out
