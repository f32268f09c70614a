"""Per-event CPU of the async client on the relay path, HTTP/1.1 vs HTTP/2.

``python -m bench.relay_bench [--streams 500] [--events 200] [--gap-ms 20] [--rounds 2]``

One process (uvloop, as the ASGI gateway) holds ``--streams`` concurrent streams from the
stand-in (its own process, ``fast``) through :class:`AsyncUpstreamClient`, each chunk fed to
the relay's :class:`SSEParser` as :class:`~openai_django.gateway.AsyncStreamRelay` does, and
reports this process's CPU (user + system) per event received, for HTTP/1.1 (a connection a
stream) and HTTP/2 (h2c, 100 streams a connection). CPU time, not wall time: it holds on a
loaded machine better than throughput does (the load average is printed beside it).
"""

import argparse
import asyncio
import json
import os
import resource
import time

BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                   "messages": [{"role": "user", "content": "Say hello"}]})


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(url, http2, streams):
    from openai_django.sse import SSEParser
    from openai_django.transport.aio import AsyncUpstreamClient

    client = AsyncUpstreamClient(url, "sk-bench", http2=http2, read_timeout=60,
                                 pool_size=streams)
    received = [0]

    async def one():
        response = await client.send("POST", "/chat/completions", body=BODY,
                                     content_type="application/json", stream=True)
        parser = SSEParser()
        async for chunk in response.raw:
            parser.feed(chunk)
            received[0] += 1
        parser.close()
        assert parser.done and parser.events

    await asyncio.gather(*(one() for _ in range(min(streams, 50))))  # warm the pools
    received[0] = 0
    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    connections = client.h2pool.opened if http2 else client.pool.opened
    await client.aclose()
    return {"events": received[0], "cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
            "cpu_us_per_event": round(cpu / received[0] * 1e6, 2),
            "connections_opened": connections}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.relay_bench", description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args(argv)
    import uvloop

    from openai_django.testing.standin import StandinServer

    out = {"streams": opts.streams, "events": opts.events, "gap_ms": opts.gap_ms,
           "loadavg_before": os.getloadavg(), "runs": []}
    with StandinServer(fast=True, events=opts.events, gap_ms=opts.gap_ms,
                       log_level="warning") as server:
        for _ in range(opts.rounds):
            for http2 in (False, True):
                result = uvloop.run(_run(server.url, http2, opts.streams))
                result["http"] = "2" if http2 else "1.1"
                out["runs"].append(result)
                print(json.dumps(result), flush=True)
    out["loadavg_after"] = os.getloadavg()
    for http in ("1.1", "2"):
        values = sorted(r["cpu_us_per_event"] for r in out["runs"] if r["http"] == http)
        out[f"http{http}_cpu_us_per_event_min"] = values[0]
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))


if __name__ == "__main__":
    main()
