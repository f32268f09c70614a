"""The soak's load generator: one share of N concurrent SSE streams, in a process of its own.

``python -m bench.soakgen --url URL --streams N --share I --shares K --t0 T --ramp S
--interval-ms G --out PREFIX`` opens the streams ``i`` of ``range(N)`` with ``i % K == I``,
stream ``i`` at ``T + S * i / N`` (``T`` is a ``time.monotonic()`` instant: CLOCK_MONOTONIC is
one clock for every process of the machine, so the shares ramp as one), each on its own
connection (:func:`lean_stream`: a protocol that counts and stamps events without parsing
them, so the generators leave the box's CPU to the gateway). Every event is stamped on
arrival; the gaps
between two events that both arrived while all N streams were open (``--plateau A B``) are
written as deviations from ``G`` (float32, ms) to ``PREFIX.gaps``, and a summary to
``PREFIX.json``. Several shares spread the client's CPU over the cores (Python parses
thousands of events a second per core).

``python -m bench.soakgen --count`` (with the harness's Django environment) prints the calls
in the database by status and outcome as one JSON line.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import resource
import sys
import time

CHAT_STREAM = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "Say hello"}]}).encode()


def _pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 3)


class _Result:
    __slots__ = ("status", "ttfe_ms", "event_times", "done", "error")

    def __init__(self):
        self.status, self.ttfe_ms, self.event_times = 0, 0.0, []
        self.done, self.error = False, ""

    @property
    def ok(self):
        return self.status == 200 and self.done and not self.error


class _LeanStream(asyncio.Protocol):
    """One SSE stream over HTTP/1.1 on ``asyncio.Protocol``, as cheap per event as a client
    can be: no stream reader, no de-chunking, no parsing of the payloads. Each read's
    events are counted (``\\n\\n``: an event's end; the chunked framing only has CRLFs) and
    stamped with the read's arrival time; ``[DONE]`` and the chunked terminator end it."""

    def __init__(self, request, result, finished):
        self.request, self.result, self.finished = request, result, finished
        self.head = b""
        self.tail = b""
        self.sent = 0.0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.sent = time.perf_counter()
        transport.write(self.request)

    def data_received(self, data):
        now = time.perf_counter()
        result = self.result
        if not result.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            line = self.head[:self.head.find(b"\r\n")].split()
            result.status = int(line[1]) if len(line) > 1 else 999
            data, self.head = self.head[end + 4:], b""
            if result.status != 200:
                self._end()
                return
        # One byte of the read before: an event's blank line split across two reads.
        n = (self.tail + data).count(b"\n\n")
        if n:
            if b"[DONE]" in data:
                result.done = True
                n -= 1
            if n > 0:
                if not result.event_times:
                    result.ttfe_ms = (now - self.sent) * 1000
                result.event_times.extend((now,) * n)
        self.tail = data[-1:]
        if data.endswith(b"0\r\n\r\n"):
            self._end()

    def _end(self):
        if not self.finished.done():
            self.finished.set_result(None)
        self.transport.close()

    def connection_lost(self, exc):
        if not self.finished.done():
            self.result.error = f"connection lost: {exc}" if exc else "connection closed"
            self.finished.set_result(None)


async def lean_stream(url, headers, body, timeout):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json",
            "Accept: text/event-stream", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    result, finished = _Result(), loop.create_future()
    transport = None
    try:
        transport, _ = await asyncio.wait_for(loop.create_connection(
            lambda: _LeanStream(request, result, finished), parts.hostname, parts.port),
            timeout)
        await asyncio.wait_for(finished, timeout)
    except asyncio.TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if transport is not None:
            transport.close()
    return result


async def _share(opts):
    one_stream = lean_stream

    headers = {"Authorization": f"Bearer {opts.key}"}
    mine = [i for i in range(opts.streams) if i % opts.shares == opts.share]
    lo, hi = opts.plateau
    gaps = array.array("f")
    summary = {"streams": len(mine), "ok": 0, "errors": 0, "error_kinds": {}, "events": 0,
               "short": 0, "ttfe_ms": [], "durations": [], "connect_failures": 0}
    sem_open = [0, 0]  # open now, most open at once

    async def one(i):
        delay = opts.t0 + opts.ramp * i / opts.streams - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sem_open[0] += 1
        sem_open[1] = max(sem_open[1], sem_open[0])
        try:
            result = await one_stream(opts.url, headers, CHAT_STREAM, timeout=opts.timeout)
        finally:
            sem_open[0] -= 1
        if result.ok:
            summary["ok"] += 1
        else:
            summary["errors"] += 1
            key = result.error or (f"status {result.status}" if result.status != 200
                                   else "no [DONE]")
            summary["error_kinds"][key] = summary["error_kinds"].get(key, 0) + 1
        times = result.event_times
        summary["events"] += len(times)
        if result.ok and opts.events and len(times) != opts.events:
            summary["short"] += 1
        if times:
            summary["ttfe_ms"].append(result.ttfe_ms)
            summary["durations"].append(times[-1] - times[0])
        for a, b in zip(times, times[1:]):
            if a >= lo and b <= hi:
                gaps.append(abs((b - a) * 1000 - opts.interval_ms))

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in mine))
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["most_open"] = sem_open[1]
    summary["ttfe_p50_ms"] = _pct(summary["ttfe_ms"], 50)
    summary["ttfe_max_ms"] = _pct(summary["ttfe_ms"], 100)
    summary["duration_p50_s"] = _pct(summary.pop("durations"), 50)
    summary.pop("ttfe_ms")
    summary["cpu_seconds"] = round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 2)
    summary["rss_max_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(opts.out + ".gaps", "wb") as fh:
        gaps.tofile(fh)
    with open(opts.out + ".json", "w") as fh:
        json.dump(summary, fh)


def read_shares(prefix, shares):
    """What ``shares`` generators wrote with ``--out PREFIX-I``: their summaries (dicts) and
    all their gap deviations (an ``array('f')`` of ms)."""
    summaries, deviations = [], array.array("f")
    for share in range(shares):
        with open(f"{prefix}-{share}.json") as fh:
            summaries.append(json.load(fh))
        with open(f"{prefix}-{share}.gaps", "rb") as fh:
            deviations.frombytes(fh.read())
    return summaries, deviations


def count_calls():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.db.models import Count

    from openai_django.models import Call

    rows = Call.objects.values("status", "outcome").annotate(n=Count("id"))
    out = {}
    for row in rows:
        out[f"{row['status']}/{row['outcome'] or '-'}"] = row["n"]
    print(json.dumps(out))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.soakgen", description=__doc__)
    parser.add_argument("--count", action="store_true")
    parser.add_argument("--url")
    parser.add_argument("--key", default=os.environ.get("BENCH_CLIENT_KEY", ""))
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--share", type=int, default=0)
    parser.add_argument("--shares", type=int, default=1)
    parser.add_argument("--t0", type=float, default=0.0)
    parser.add_argument("--ramp", type=float, default=0.0)
    parser.add_argument("--interval-ms", type=float, default=500.0)
    parser.add_argument("--events", type=int, default=0, help="events each stream should carry")
    parser.add_argument("--plateau", type=float, nargs=2, default=(0.0, 0.0))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out")
    opts = parser.parse_args(argv)
    if opts.count:
        return count_calls()
    if not opts.url or not opts.out:
        sys.exit("--url and --out are required")
    asyncio.run(_share(opts))


if __name__ == "__main__":
    main()
