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
        return {"Content-Type": content_type,
                "Authorization": f"Bearer {self.harness.client_key}"}

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


def streaming(ctx):
    p = ctx.params
    body = _stream_body(ctx)
    gw_url = ctx.gateway.url + "/v1/chat/completions"
    direct_url = ctx.upstream.url + "/chat/completions"
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
