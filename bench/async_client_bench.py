"""Async upstream clients side by side, on the gateway's own path.

``.venv/bin/python -m bench.async_client_bench [--seconds 3] [--only own,aiohttp,httpx] [--tls]``

Against the stand-in upstream (``StandinServer(fast=True)``, its own process), from one
process on one event loop: POST ``/v1/chat/completions`` JSON at c=1 (p50/p99 per call and
CPU per call, ``time.process_time`` of this process only), c=32 and c=256 (calls/s, CPU per
call), and 20-event streams paced by the stand-in (``X-Standin-Ttft-Ms``, ``X-Standin-Gap-Ms``):
time to first event and the gaps between events, less the stand-in's own pacing. With two or
more CPUs the stand-in is pinned to one and this process to another.

Candidates: our own client (:mod:`openai_django.transport.aio`), ``aiohttp`` (ClientSession on
a TCPConnector pool) and ``httpx.AsyncClient`` (and ``httpx2`` when installed). Each is given
an unbounded connection count with 256 idle connections kept, so none waits on its pool.
"""

import argparse
import asyncio
import gc
import json
import os
import ssl
import statistics
import sys
import time

from openai_django.testing import StandinServer

KEY = "sk-bench"
BODY = json.dumps({"model": "gpt-4o-mini",
                   "messages": [{"role": "user", "content": "Say hello to the benchmark."}]
                   }).encode()
HEADERS = {"Content-Type": "application/json"}
TTFT_MS, GAP_MS, EVENTS = 5.0, 2.0, 20
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "Stream to me."}]}).encode()
STREAM_HEADERS = {"Content-Type": "application/json", "X-Standin-Events": str(EVENTS),
                  "X-Standin-Ttft-Ms": str(TTFT_MS), "X-Standin-Gap-Ms": str(GAP_MS)}


# -- adapters: post(body) -> bytes; stream() -> async iterator of bytes; close() ---------------

class Own:
    name = "own"

    def __init__(self, url, context):
        from openai_django.transport import AsyncUpstreamClient

        self.client = AsyncUpstreamClient(url, KEY, pool_size=256, read_timeout=30,
                                          ssl_context=context)

    async def post(self):
        response = await self.client.send("POST", "/chat/completions", body=BODY,
                                          content_type="application/json")
        assert response.status == 200, response.status
        return response.body

    async def stream(self):
        response = await self.client.send("POST", "/chat/completions", body=STREAM_BODY,
                                          headers=STREAM_HEADERS, stream=True)
        async for chunk in response.raw:
            yield chunk

    async def close(self):
        await self.client.aclose()


class Aiohttp:
    name = "aiohttp"

    def __init__(self, url, context):
        import aiohttp

        self.url = url + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60,
                                         ssl=context if context is not None else True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout,
            headers={"Authorization": f"Bearer {KEY}", "User-Agent": "bench"})

    async def post(self):
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as response:
            body = await response.read()
            assert response.status == 200, response.status
            return body

    async def stream(self):
        async with self.session.post(self.url, data=STREAM_BODY,
                                     headers=STREAM_HEADERS) as response:
            async for chunk in response.content.iter_any():
                yield chunk

    async def close(self):
        await self.session.close()


class Httpx:
    name = "httpx"
    module = "httpx"

    def __init__(self, url, context):
        httpx = __import__(self.module)
        self.url = url + "/chat/completions"
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(30, connect=10),
            verify=context if context is not None else True,
            headers={"Authorization": f"Bearer {KEY}", "User-Agent": "bench"})

    async def post(self):
        response = await self.client.post(self.url, content=BODY, headers=HEADERS)
        assert response.status_code == 200, response.status_code
        return response.content

    async def stream(self):
        async with self.client.stream("POST", self.url, content=STREAM_BODY,
                                      headers=STREAM_HEADERS) as response:
            async for chunk in response.aiter_raw():
                yield chunk

    async def close(self):
        await self.client.aclose()


class Httpx2(Httpx):
    name = module = "httpx2"


CANDIDATES = {c.name: c for c in (Own, Aiohttp, Httpx, Httpx2)}


# -- measurements ------------------------------------------------------------------------------

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def sequential(client, seconds):
    for _ in range(200):
        await client.post()
    times = []
    cpu0, deadline = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await client.post()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return {"p50_us": pct(times, 0.5) * 1e6, "p99_us": pct(times, 0.99) * 1e6,
            "cpu_us": cpu / len(times) * 1e6, "calls": len(times)}


async def concurrent(client, concurrency, seconds):
    done = 0
    errors = 0

    async def worker(deadline):
        nonlocal done, errors
        while time.perf_counter() < deadline:
            try:
                await client.post()
            except Exception:
                errors += 1
            else:
                done += 1

    await asyncio.gather(*(worker(time.perf_counter() + 0.5) for _ in range(concurrency)))
    done = errors = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(t0 + seconds) for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"rps": done / elapsed, "cpu_us": cpu / max(done, 1) * 1e6, "errors": errors}


async def streams(client, rounds):
    firsts, gaps = [], []
    for _ in range(rounds + 2):
        t0 = time.perf_counter()
        arrivals = []
        async for chunk in client.stream():
            now = time.perf_counter()
            arrivals.extend([now] * chunk.count(b"data: "))
        assert len(arrivals) == EVENTS + 1, len(arrivals)  # + [DONE]
        firsts.append((arrivals[0] - t0) * 1000 - TTFT_MS)
        gaps.extend((b - a) * 1000 - GAP_MS for a, b in zip(arrivals[:EVENTS - 1],
                                                           arrivals[1:EVENTS]))
    firsts = firsts[2:]
    return {"ttfe_over_ms": statistics.median(firsts), "gap_over_ms": statistics.mean(gaps),
            "gap_p99_over_ms": pct(gaps, 0.99)}


async def run_one(cls, url, context, seconds, stream_rounds):
    client = cls(url, context)
    try:
        out = {"c1": await sequential(client, seconds)}
        for c in (32, 256):
            out[f"c{c}"] = await concurrent(client, c, seconds)
        out["stream"] = await streams(client, stream_rounds)
    finally:
        await client.close()
    return out


def pin(standin):
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:
        os.sched_setaffinity(standin.pid, {cpus[-1]})
        os.sched_setaffinity(0, {cpus[0]})


def table(results):
    rows = [f"{'client':8} {'c=1 p50':>9} {'c=1 p99':>9} {'CPU/call':>9} {'c=32 /s':>9} "
            f"{'CPU/call':>9} {'c=256 /s':>9} {'errors':>6} {'TTFE+':>8} {'gap+':>8} "
            f"{'gap+p99':>8}"]
    for name, r in results.items():
        rows.append(
            f"{name:8} {r['c1']['p50_us']:7.0f}us {r['c1']['p99_us']:7.0f}us "
            f"{r['c1']['cpu_us']:7.0f}us {r['c32']['rps']:9.0f} {r['c32']['cpu_us']:7.0f}us "
            f"{r['c256']['rps']:9.0f} {r['c32']['errors'] + r['c256']['errors']:6d} "
            f"{r['stream']['ttfe_over_ms']:6.2f}ms {r['stream']['gap_over_ms']:6.3f}ms "
            f"{r['stream']['gap_p99_over_ms']:6.3f}ms")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.async_client_bench")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--streams", type=int, default=30, help="20-event streams per client")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(CANDIDATES))
    parser.add_argument("--tls", action="store_true",
                        help="over the stand-in's TLS listener (its certificate trusted)")
    parser.add_argument("--json", help="also write the results here")
    opts = parser.parse_args(argv)
    names = [n for n in (opts.only.split(",") if opts.only else CANDIDATES) if n]
    results = {}
    with StandinServer(fast=True, tls=opts.tls) as standin:
        pin(standin)
        url, context = standin.url, None
        if opts.tls:
            url, context = standin.tls_url, ssl.create_default_context(cafile=standin.ca_file)
        for name in names:
            cls = CANDIDATES[name]
            try:
                __import__(getattr(cls, "module", None) or {"own": "openai_django",
                                                              "aiohttp": "aiohttp"}[name])
            except ImportError:
                print(f"{name}: not installed, skipped", file=sys.stderr)
                continue
            gc.collect()
            results[name] = asyncio.run(run_one(cls, url, context, opts.seconds, opts.streams))
            print(f"{name} done", file=sys.stderr)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{'TLS' if opts.tls else 'plain HTTP'}, "
          f"{opts.seconds:g} s a figure, streams: {EVENTS} events, ttft {TTFT_MS:g} ms, "
          f"gap {GAP_MS:g} ms (TTFE+/gap+: over the stand-in's pacing)")
    print(table(results))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
