"""Load generators: ``wrk`` for request/response traffic, an asyncio client for event streams.

``wrk`` (Debian's package) is driven by a generated Lua script whose ``done`` hook prints one
JSON line with exact percentiles in microseconds, so nothing is scraped from its human output.
Streams need per-event arrival times, which no stock tool gives, so :class:`SSEConnection` is a
small HTTP/1.1 client on asyncio streams: it decodes chunked bodies, splits server-sent events
and stamps each event with the time the read that completed it returned (two events completed
by one read share a stamp: that is what coalescing looks like from the client).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

WRK = shutil.which("wrk")

_LUA = r"""
local f = io.open(%(body_path)s, "rb")
wrk.method = %(method)s
wrk.body = f:read("*a")
f:close()
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,' ..
    '"mean":%%f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx answers
    raw: dict = field(default_factory=dict)


class WrkScript:
    """A Lua script sending one fixed request; the body is read from a file so that any bytes
    (a 4 MB multipart upload) go through unchanged."""

    def __init__(self, workdir, name, *, body, headers, method="POST"):
        self.body_path = os.path.join(workdir, f"{name}.body")
        with open(self.body_path, "wb") as fh:
            fh.write(body)
        lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                          for k, v in headers.items())
        self.path = os.path.join(workdir, f"{name}.lua")
        with open(self.path, "w") as fh:
            fh.write(_LUA % {"body_path": json.dumps(self.body_path), "method": json.dumps(method),
                            "headers": lines})


def run_wrk(url, script, *, connections=1, threads=1, seconds=3.0, timeout_s=10):
    """Run ``wrk`` once and return its figures. Bounded: ``seconds`` of load, then it stops."""
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s",
           "-s", script.path, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} "
                           f"{out.stderr[-500:]}")
    data = json.loads(line[8:])
    secs = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"], seconds=secs, rps=data["requests"] / secs if secs else 0,
        p50_ms=data["p50"] / 1000, p90_ms=data["p90"] / 1000, p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000, errors=errors, raw=data,
    )


# -- event streams -----------------------------------------------------------------------


#: The last event of a stream of named events (no ``data: [DONE]`` follows them).
TERMINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed",
                   b"speech.audio.done", b"transcript.text.done",
                   b"image_generation.completed", b"image_edit.completed")


@dataclass
class StreamResult:
    status: int = 0
    ttfe_ms: float = 0.0  # request sent -> first complete event
    event_times: list = field(default_factory=list)  # perf_counter() per event
    done: bool = False  # saw ``data: [DONE]``
    error: str = ""
    headers: dict = field(default_factory=dict)

    @property
    def ok(self):
        return self.status == 200 and self.done and not self.error

    def gaps_ms(self):
        t = self.event_times
        return [(b - a) * 1000 for a, b in zip(t, t[1:])]


class _Chunked:
    """Incremental decoder of a chunked HTTP body (states: size line, data, CRLF)."""

    def __init__(self):
        self.buffer = b""
        self.state = "size"
        self.remaining = 0
        self.finished = False

    def feed(self, data):
        self.buffer += data
        out = []
        while not self.finished:
            if self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.buffer[:end].split(b";")[0], 16)
                self.buffer = self.buffer[end + 2:]
                if size == 0:
                    self.finished = True
                    break
                self.remaining, self.state = size, "data"
            elif self.state == "data":
                if not self.buffer:
                    break
                take = self.buffer[: self.remaining]
                out.append(take)
                self.buffer = self.buffer[len(take):]
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.state = "crlf"
            else:
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.state = "size"
        return b"".join(out)


class SSEConnection:
    """One keep-alive HTTP/1.1 connection sending streaming requests one after another."""

    def __init__(self, url, headers):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.headers = headers
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port,
                                                                 limit=1 << 20)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def stream(self, body, timeout=60.0):
        try:
            return await asyncio.wait_for(self._stream(body), timeout)
        except asyncio.TimeoutError:
            self.close()
            return StreamResult(error="timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            return StreamResult(error=f"{type(exc).__name__}: {exc}")

    async def _stream(self, body):
        if self.writer is None:
            await self.open()
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}", "Content-Type: application/json",
                "Accept: text/event-stream"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        result = StreamResult()
        reader = self.reader
        sent = time.perf_counter()
        self.writer.write(request)
        raw_head = await reader.readuntil(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        result.status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        result.headers = headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = int(headers["content-length"]) if "content-length" in headers else None
        decoder = _Chunked() if chunked else None
        pending = b""
        received = 0
        while True:
            if length is not None and received >= length:
                break
            if decoder is not None and decoder.finished:
                break
            data = await reader.read(65536)
            now = time.perf_counter()
            if not data:
                if chunked or length is not None:
                    result.error = "connection closed mid-body"
                self.close()
                break
            received += len(data)
            body_bytes = decoder.feed(data) if decoder else data
            pending += body_bytes
            while True:
                pending = pending.replace(b"\r\n", b"\n") if b"\r" in pending else pending
                end = pending.find(b"\n\n")
                if end < 0:
                    break
                block, pending = pending[:end], pending[end + 2:]
                name = b""
                if block.startswith(b"event:"):  # a named event (Responses, speech, images)
                    name, _, block = block.partition(b"\n")
                    name = name[6:].strip()
                if not block.startswith(b"data:"):
                    continue
                payload = block[5:].strip()
                if payload == b"[DONE]":
                    result.done = True
                    continue
                if name in TERMINAL_EVENTS:  # named streams end with an event, not [DONE]
                    result.done = True
                if not result.event_times:
                    result.ttfe_ms = (now - sent) * 1000
                result.event_times.append(now)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return result


async def one_stream(url, headers, body, timeout=60.0):
    conn = SSEConnection(url, headers)
    try:
        return await conn.stream(body, timeout=timeout)
    finally:
        conn.close()
