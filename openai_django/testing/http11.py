"""A small, fast HTTP/1.1 server core on ``asyncio.Protocol``.

Why hand-rolled instead of ``http.server`` or asyncio streams: the stand-in upstream sits
under the gateway's benchmarks, so its own cost has to be a rounding error (tens of
microseconds per request).  Parsing happens directly in ``data_received`` and a handler that
answers synchronously is written out without creating a task; only handlers that need to
wait (SSE streams, injected delays) get a task.  Everything else a test needs from a real
HTTP server is here: keep-alive and pipelining, Content-Length and chunked request bodies,
``Expect: 100-continue``, chunked streaming responses with write flow control, and an abrupt
RST close for fault injection.

The application object only has to provide ``handle(request)`` returning either a
:class:`Response` or an ``async`` callable taking the :class:`HTTPProtocol` (which then acts
as the connection: ``start_stream``/``send_chunk``/``drain``/``end_stream``/``close``/
``reset``) and optionally returning a final :class:`Response`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

log = logging.getLogger("openai_django.testing.http")

MAX_HEAD_BYTES = 64 * 1024
#: Stop reading from a client that pipelines more than this while a handler is still busy.
MAX_PIPELINE_BUFFER = 1024 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"


_STATUS_LINES: dict[int, str] = {}


def _status(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = status_line(status)
    return line


class _DateCache:
    """``Date`` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


_date = _DateCache()


try:  # optional speed-up; the stand-in only needs the stdlib
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


def dumps(obj: Any) -> bytes:
    """Compact JSON as bytes (orjson when importable, else the stdlib)."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes) -> Any:
    """Parse JSON bytes; raises ``ValueError`` on bad input."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def error_body(message: str, type_: str = "invalid_request_error", param: Any = None,
               code: Any = None) -> bytes:
    """The OpenAI error envelope, used for every non-2xx answer."""
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class ProtocolError(Exception):
    """A request the server cannot parse; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request.  ``headers`` keys are lower-case; ``body`` is the full body."""

    __slots__ = (
        "body",
        "cache",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "received_at",
        "scheme",
        "target",
        "version",
    )

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str],
                 scheme: str) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query_string = query
        self.version = version
        self.headers = headers
        self.body = b""
        self.scheme = scheme
        self.received_at = time.perf_counter()
        # Per-request memo for parsed JSON, form data, query dict ... filled by the app.
        self.cache: dict[str, Any] = {}
        conn = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in conn
        else:
            self.keep_alive = "keep-alive" in conn


class Response:
    """A complete (non-streaming) response; the protocol adds length, date and connection."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 content_type: str = "application/json",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers if headers is not None else []


AsyncHandler = Callable[["HTTPProtocol"], Awaitable[Response | None]]


def _sanitize(value: str) -> str:
    if "\r" in value or "\n" in value:
        return value.replace("\r", " ").replace("\n", " ")
    return value


class HTTPProtocol(asyncio.Protocol):
    """One client connection.  Also the "connection" object handed to async handlers."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, *, scheme: str = "http",
                 max_body: int = 512 * 1024 * 1024, h2_max_streams: int | None = None) -> None:
        self.app = app
        # HTTP/2 (.http2): a connection that opens with the client preface, or chose h2 in
        # ALPN, is served by an H2Session from then on; ``_sniff`` until the first bytes.
        self.h2: Any = None
        self._sniff = True
        self.h2_max_streams = h2_max_streams
        self.loop = loop
        self.scheme = scheme
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False  # the transport is gone (or going): never write again
        self.busy = False  # an async handler owns the connection
        self.task: asyncio.Task | None = None
        self.write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._reading_paused = False
        # Request currently being received (head parsed, body incomplete).
        self._req: Request | None = None
        self._body_mode = 0  # 0 none, 1 content-length, 2 chunked
        self._body_left = 0
        self._chunk_state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._chunk_body = bytearray()
        self._head_scan = 0
        # Set for the request an async handler is serving.
        self.current: Request | None = None
        self.stream_started = False
        self._stream_chunked = True

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._start_h2()

    def _start_h2(self) -> None:
        from .http2 import H2Session

        self._sniff = False
        self.h2 = H2Session(self.app, self.loop, self.transport, self.scheme, self.max_body,
                            self.h2_max_streams)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.h2 is not None:
            self.h2.lost()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.h2 is not None:
            self.h2.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.h2 is not None:
            self.h2.resume_writing()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.feed(data)
            return
        if self._sniff:  # the connection's first bytes: HTTP/2's preface?
            from .http2 import PREFACE

            head = bytes(self.buf) + data
            if PREFACE.startswith(head[:24]) and len(head) < 24:
                self.buf += data
                return
            self._sniff = False
            if head.startswith(PREFACE):
                self.buf.clear()
                self._start_h2()
                self.h2.feed(head)
                return
        self.buf += data
        if self.busy:
            if len(self.buf) > MAX_PIPELINE_BUFFER and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._process()

    # -- parsing ---------------------------------------------------------------------------

    def _process(self) -> None:
        try:
            while not self.busy and not self.closed:
                req = self._req
                if req is None:
                    req = self._parse_head()
                    if req is None:
                        return
                if self._body_mode == 1:
                    if len(self.buf) < self._body_left:
                        return
                    n = self._body_left
                    req.body = bytes(self.buf[:n])
                    del self.buf[:n]
                elif self._body_mode == 2:
                    body = self._parse_chunked()
                    if body is None:
                        return
                    req.body = body
                self._req = None
                self._body_mode = 0
                self._dispatch(req)
        except ProtocolError as exc:
            self._fail(exc.status, exc.message)

    def _parse_head(self) -> Request | None:
        buf = self.buf
        # Tolerate stray CRLFs between pipelined requests (RFC 9112 section 2.2).
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n", self._head_scan)
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolError(431, "Request header fields too large.")
            self._head_scan = max(0, len(buf) - 3)
            return None
        self._head_scan = 0
        head = buf[:end].decode("latin-1")
        del buf[:end + 4]
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise ProtocolError(400, "Malformed request line.") from None
        if not version.startswith("HTTP/1."):
            raise ProtocolError(505, "Only HTTP/1.x is supported.")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(400, "Malformed header line.")
            name = name.strip().lower()
            value = value.strip()
            if name in headers:
                headers[name] = headers[name] + ", " + value
            else:
                headers[name] = value
        req = Request(method, target, version, headers, self.scheme)
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(400, "Unsupported Transfer-Encoding.")
            self._body_mode = 2
            self._chunk_state = 0
            self._chunk_body = bytearray()
        else:
            cl = headers.get("content-length")
            if cl is not None:
                try:
                    n = int(cl)
                except ValueError:
                    raise ProtocolError(400, "Invalid Content-Length.") from None
                if n < 0:
                    raise ProtocolError(400, "Invalid Content-Length.")
                if n > self.max_body:
                    raise ProtocolError(413, "Request body too large.")
                self._body_mode = 1 if n else 0
                self._body_left = n
            else:
                self._body_mode = 0
        if (self._body_mode and headers.get("expect", "").lower() == "100-continue"
                and not (self._body_mode == 1 and len(buf) >= self._body_left)):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._req = req
        return req

    def _parse_chunked(self) -> bytes | None:
        buf = self.buf
        while True:
            state = self._chunk_state
            if state == 0:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 4096:
                        raise ProtocolError(400, "Malformed chunk size line.")
                    return None
                size_txt = bytes(buf[:i]).split(b";", 1)[0].strip()
                del buf[:i + 2]
                try:
                    size = int(size_txt, 16)
                except ValueError:
                    raise ProtocolError(400, "Malformed chunk size.") from None
                if size < 0:
                    raise ProtocolError(400, "Malformed chunk size.")
                if size == 0:
                    self._chunk_state = 3
                else:
                    if len(self._chunk_body) + size > self.max_body:
                        raise ProtocolError(413, "Request body too large.")
                    self._body_left = size
                    self._chunk_state = 1
            elif state == 1:
                if not buf:
                    return None
                n = min(self._body_left, len(buf))
                self._chunk_body += buf[:n]
                del buf[:n]
                self._body_left -= n
                if self._body_left:
                    return None
                self._chunk_state = 2
            elif state == 2:
                if len(buf) < 2:
                    return None
                if buf[:2] != b"\r\n":
                    raise ProtocolError(400, "Malformed chunk terminator.")
                del buf[:2]
                self._chunk_state = 0
            else:  # trailers, ended by an empty line
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError(431, "Trailers too large.")
                    return None
                del buf[:i + 2]
                if i == 0:
                    body = bytes(self._chunk_body)
                    self._chunk_body = bytearray()
                    self._chunk_state = 0
                    return body

    def _fail(self, status: int, message: str) -> None:
        log.info("protocol error %s: %s", status, message)
        if self.closed:
            return
        body = error_body(message)
        head = (f"{_status(status)}content-type: application/json\r\ncontent-length: "
                f"{len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("latin-1") + body)
        self.close()

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        try:
            result = self.app.handle(req)
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.path)
            result = Response(500, error_body("The stand-in failed.", "server_error"))
        if isinstance(result, Response):
            self.send_response(result, req)
        else:
            self.busy = True
            self.current = req
            self.stream_started = False
            self.task = self.loop.create_task(self._run(result, req))

    async def _run(self, handler: AsyncHandler, req: Request) -> None:
        try:
            result = await handler(self)
            if result is not None and not self.closed:
                self.send_response(result, req)
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("async handler failed for %s %s", req.method, req.path)
            if not self.closed:
                if self.stream_started:
                    self.close()
                else:
                    self.send_response(
                        Response(500, error_body("The stand-in failed.", "server_error")), req)
        finally:
            self.task = None
            self.busy = False
            self.current = None
        if self.closed:
            return
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        if self.buf:
            self._process()

    # -- writing (the connection API used by handlers) --------------------------------------

    def _head(self, status: int, content_type: str, headers: list[tuple[str, str]],
              length: int | None, keep_alive: bool, version: str) -> bytes:
        parts = [_status(status)]
        if content_type:
            parts.append(f"content-type: {content_type}\r\n")
        if length is not None:
            parts.append(f"content-length: {length}\r\n")
        parts.append(f"date: {_date.get()}\r\n")
        for name, value in headers:
            parts.append(f"{name}: {_sanitize(str(value))}\r\n")
        if not keep_alive:
            parts.append("connection: close\r\n")
        elif version != "HTTP/1.1":
            parts.append("connection: keep-alive\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    def send_response(self, resp: Response, req: Request) -> None:
        if self.closed:
            return
        body = resp.body
        head = self._head(resp.status, resp.content_type, resp.headers, len(body),
                          req.keep_alive, req.version)
        if req.method == "HEAD":
            self.transport.write(head)
        elif len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        if not req.keep_alive:
            self.close()

    def start_stream(self, status: int, content_type: str,
                     headers: list[tuple[str, str]]) -> None:
        """Send the head of a streamed response (chunked for HTTP/1.1 clients)."""
        req = self.current
        assert req is not None, "start_stream outside an async handler"
        self.stream_started = True
        self._stream_chunked = req.version == "HTTP/1.1"
        if self._stream_chunked:
            headers = headers + [("transfer-encoding", "chunked")]
        else:
            req.keep_alive = False  # HTTP/1.0: the end of the body is the end of the socket
        self.transport.write(
            self._head(status, content_type, headers, None, req.keep_alive, req.version))

    def send_chunk(self, data: bytes) -> None:
        """Write one piece of a streamed body right away (no coalescing)."""
        if self.closed or not data:
            return
        if self._stream_chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self.write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None

    def end_stream(self) -> None:
        """Finish a streamed body cleanly; the connection stays open if keep-alive."""
        if self.closed:
            return
        if self._stream_chunked:
            self.transport.write(b"0\r\n\r\n")
        req = self.current
        if req is None or not req.keep_alive:
            self.close()

    def write_raw(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def head_bytes(self, status: int, content_type: str, headers: list[tuple[str, str]],
                   length: int | None) -> bytes:
        """A response head for the current request, for handlers that write raw bytes."""
        req = self.current
        return self._head(status, content_type, headers, length,
                          req.keep_alive if req else False, req.version if req else "HTTP/1.1")

    def close(self) -> None:
        """Close gracefully: buffered data is flushed, then FIN."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), answering nothing."""
        if self.closed:
            return
        self.closed = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()
