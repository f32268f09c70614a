"""The soak's floor: what this machine gives *any* Python ASGI app holding N streams.

``python -m bench.soak_floor [--streams 10000] [--seconds 60] [--interval-ms 500] [--ramp 45]
[--shares 2]`` serves :func:`app` under uvicorn (one worker, the bench's loop and HTTP parser,
as the soak's gateway) and loads it with the soak's own load generators (``bench.soakgen``).
The app does the least a relay can do per event and nothing per call: no key, no record, no
upstream; each stream's task sleeps to its next event's due time and sends a chat chunk of the
stand-in's size (one timer and one task step an event, as the gateway's relay task is woken by
its upstream read). There is no stand-in either, so the gateway's soak has the stand-in's CPU
on top of this.

It prints one JSON line: the streams open at once (at the client, and the server's fds), the
errors, the server's CPU at the plateau (cores) and all in (us an event), the generators' CPU,
and the event gap deviation at the client. If this floor cannot hold N streams at once, no
gateway in one Python process can on this machine; if it can, the difference to the gateway's
soak is the gateway's (and the stand-in's) own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A chat completion chunk as the stand-in sends it (one token of content), as an SSE event.
_CHUNK = (b'data: {"id":"chatcmpl-floor0000000000000000000000","object":'
          b'"chat.completion.chunk","created":1733100000,"model":"gpt-4o-mini",'
          b'"system_fingerprint":"fp_floor","choices":[{"index":0,"delta":{"content":'
          b'" hello"},"logprobs":null,"finish_reason":null}]}\n\n')
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _knob(name, default):
    return float(os.environ.get(name, default))


async def app(scope, receive, send):
    """N events ``FLOOR_GAP_MS`` apart, then ``[DONE]``; ``GET /v1/openapi.yaml`` answers
    (the harness's readiness probe)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    while True:  # the request's body
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if os.environ.get("FLOOR_UPSTREAM"):
        return await _relay(send)
    events, gap = int(_knob("FLOOR_EVENTS", 120)), _knob("FLOOR_GAP_MS", 500) / 1000
    loop = asyncio.get_running_loop()
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    due = loop.time()
    for _ in range(events):
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
        due += gap
        await asyncio.sleep(max(0.0, due - loop.time()))
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body"})


_client = []


async def _relay(send):
    """``--relay``: the stream asked of the stand-in with the gateway's async client over
    HTTP/2 (as the soak's gateway; ``--relay-http 1.1``: a connection a stream) and relayed
    part by part, each fed to an :class:`~openai_django.sse.SSEParser` as the gateway's relay
    does; no key, no record, no checkpoint."""
    from openai_django.sse import SSEParser
    from openai_django.transport.aio import AsyncUpstreamClient

    if not _client:
        _client.append(AsyncUpstreamClient(os.environ["FLOOR_UPSTREAM"], "sk-floor",
                                           http2=os.environ.get("FLOOR_HTTP") != "1.1",
                                           read_timeout=120, pool_size=20_000))
    response = await _client[0].send("POST", "/chat/completions", body=_BODY,
                                     content_type="application/json", stream=True)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    parser = SSEParser()
    async for chunk in response.raw:
        parser.feed(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    parser.close()
    await send({"type": "http.response.body"})


_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                    "messages": [{"role": "user", "content": "Say hello"}]})


def floor(*, streams=10_000, seconds=60.0, interval_ms=500.0, ramp=45.0, shares=2,
          relay=False, relay_http="2"):
    """One floor run (the command's options as keywords): its figures as a dict."""
    return _floor(argparse.Namespace(streams=streams, seconds=seconds,
                                     interval_ms=interval_ms, ramp=ramp, shares=shares,
                                     relay=relay, relay_http=relay_http))


def main(argv=None):
    print(json.dumps(_floor(_parse(argv))))


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.soak_floor", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval-ms", type=float, default=500.0)
    parser.add_argument("--ramp", type=float, default=45.0)
    parser.add_argument("--shares", type=int, default=2)
    parser.add_argument("--relay", action="store_true",
                        help="relay each stream from the stand-in (its own process, HTTP/2)")
    parser.add_argument("--relay-http", choices=("2", "1.1"), default="2")
    return parser.parse_args(argv)


def _floor(opts):
    from bench.harness import (
        VENV_BIN,
        raise_fd_limit,
        raise_somaxconn,
        tcp_listener,
        tree_cpu_seconds,
        tree_fds,
        tree_rss_kb,
        uvicorn_stack,
        wait_http,
    )
    from bench.soakgen import read_shares

    raise_fd_limit(max(65536, 2 * opts.streams + 4096))
    raise_somaxconn()
    events = max(2, round(opts.seconds * 1000 / opts.interval_ms))
    listener = tcp_listener()
    port = listener.getsockname()[1]
    loop_name, http = uvicorn_stack()
    cmd = [str(VENV_BIN / "uvicorn"), "--fd", str(listener.fileno()), "--workers", "1",
           "--loop", loop_name, "--http", http, "--no-access-log", "--log-level", "warning",
           "--backlog", "4096", "bench.soak_floor:app"]
    env = {**os.environ, "PYTHONPATH": ROOT, "FLOOR_EVENTS": str(events),
           "FLOOR_GAP_MS": str(opts.interval_ms)}
    standin = None
    if opts.relay:
        from openai_django.testing.standin import StandinServer

        standin = StandinServer(fast=True, events=events, gap_ms=opts.interval_ms,
                                log_level="warning").start()
        env["FLOOR_UPSTREAM"], env["FLOOR_HTTP"] = standin.url, opts.relay_http
    workdir = tempfile.mkdtemp(prefix="soak-floor-")
    log = open(os.path.join(workdir, "server.log"), "wb")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              pass_fds=(listener.fileno(),))
    listener.close()
    url = f"http://127.0.0.1:{port}"
    procs = []
    try:
        wait_http(url + "/v1/openapi.yaml", timeout=30, proc=server)
        idle_rss, idle_fds = tree_rss_kb(server.pid), tree_fds(server.pid)
        t0 = time.monotonic() + 1.5
        plateau = (t0 + opts.ramp + 1.0, t0 + opts.seconds - 1.0)
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), tree_rss_kb(server.pid),
                                tree_fds(server.pid), tree_cpu_seconds(server.pid),
                                tree_cpu_seconds(standin.process.pid) if standin else 0.0))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prefix = os.path.join(workdir, "floor")
        procs += [subprocess.Popen(
            [sys.executable, "-m", "bench.soakgen", "--url", url + "/v1/chat/completions",
             "--streams", str(opts.streams), "--share", str(share), "--shares",
             str(opts.shares), "--t0", repr(t0), "--ramp", str(opts.ramp), "--interval-ms",
             str(opts.interval_ms), "--events", str(events), "--plateau", repr(plateau[0]),
             repr(plateau[1]), "--timeout", str(opts.seconds * 3 + 60), "--out",
             f"{prefix}-{share}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
            stdout=subprocess.DEVNULL) for share in range(opts.shares)]
        for proc in procs:
            proc.wait()
        stop.set()
        sampler.join()
    finally:
        # Exactly the processes this script started: the generators (if cut short), the
        # server's process group, the stand-in.
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(10)
        log.close()
        if standin is not None:
            standin.stop()
    summaries, deviations = read_shares(prefix, opts.shares)
    shutil.rmtree(workdir, ignore_errors=True)
    received = sum(s["events"] for s in summaries)
    in_plateau = [x for x in samples if plateau[0] <= x[0] <= plateau[1]]
    span = in_plateau[-1][0] - in_plateau[0][0] if len(in_plateau) > 1 else 0
    dev = sorted(deviations)

    def pct(q):
        return round(dev[min(len(dev) - 1, int(q / 100 * len(dev)))], 2) if dev else None

    return {
        "streams": opts.streams, "seconds": opts.seconds, "interval_ms": opts.interval_ms,
        "ramp": opts.ramp, "shares": opts.shares, "relay": opts.relay and opts.relay_http,
        "loop": loop_name,
        "http": http,
        "ok": sum(s["ok"] for s in summaries), "errors": sum(s["errors"] for s in summaries),
        "error_kinds": {k: n for s in summaries for k, n in s["error_kinds"].items()},
        "most_open_at_client": sum(s["most_open"] for s in summaries),
        "fds_idle": idle_fds, "fds_peak": max((x[2] for x in samples), default=None),
        "ttfe_p50_ms": statistics.median(s["ttfe_p50_ms"] or 0 for s in summaries),
        "rss_idle_mb": round(idle_rss / 1024, 1),
        "rss_peak_mb": round(max(x[1] for x in samples) / 1024, 1),
        "cpu_cores_plateau": round((in_plateau[-1][3] - in_plateau[0][3]) / span, 3)
        if span else None,
        "cpu_us_per_event_all_in": round((samples[-1][3] - samples[0][3]) * 1e6
                                         / max(1, received), 1),
        "upstream_cpu_cores_plateau": round((in_plateau[-1][4] - in_plateau[0][4]) / span, 3)
        if span and standin else None,
        "client_cpu_seconds": round(sum(s["cpu_seconds"] for s in summaries), 1),
        "events_received": received,
        "gap_dev_p50_ms": pct(50), "gap_dev_p99_ms": pct(99),
    }


if __name__ == "__main__":
    main()
