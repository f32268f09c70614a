"""HTTP/2 for the stand-in upstream: prior-knowledge h2c on the plain port, h2 by ALPN on the
TLS port (``--tls-h2``), beside the HTTP/1.1 core of :mod:`.http11` (unchanged: a connection
is HTTP/2 only if it opens with the client preface, or chose h2 in ALPN).

Framing is the ``h2`` library's. Each request is one :class:`H2Exchange`, which gives the
app's handlers the very connection API of :class:`~.http11.HTTPProtocol`
(``start_stream``/``send_chunk``/``drain``/``end_stream``/``close``/``reset``/``closed``/
``write_paused``), so streams, faults and pacing are the same code on both protocols:

- ``close()`` mid-answer (the ``cut`` fault) resets that stream (``RST_STREAM
  INTERNAL_ERROR``): over HTTP/2 a server cuts one answer without the connection;
- ``reset()`` (the ``reset`` fault) drops the whole TCP connection: every stream on it is lost;
- ``POST /_control/goaway`` sends ``GOAWAY`` on every HTTP/2 connection (streams in flight
  finish, then the connection closes);
- ``--h2-max-streams N`` sets ``MAX_CONCURRENT_STREAMS`` (default 100, h2's own).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .http11 import Request, Response, _date, _sanitize, error_body

log = logging.getLogger("openai_django.testing.http")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 100
SESSIONS: weakref.WeakSet[H2Session] = weakref.WeakSet()

_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                    validate_inbound_headers=False,
                                    normalize_inbound_headers=False)
_S = h2.settings.SettingCodes
_DataReceived = h2.events.DataReceived


def goaway_all() -> int:
    """Send GOAWAY on every live HTTP/2 connection; how many."""
    n = 0
    for session in list(SESSIONS):
        if not session.closed:
            session.goaway()
            n += 1
    return n


class _PartialHead:
    """What :meth:`H2Exchange.head_bytes` returns: the head of an answer that the ``cut``
    fault sends with half its body (``head + body[:n]`` then ``write_raw``)."""

    __slots__ = ("status", "content_type", "headers", "length", "data")

    def __init__(self, status, content_type, headers, length, data=b""):
        self.status, self.content_type, self.headers = status, content_type, headers
        self.length, self.data = length, data

    def __add__(self, data: bytes) -> _PartialHead:
        return _PartialHead(self.status, self.content_type, self.headers, self.length,
                            self.data + data)


class H2Exchange:
    """One HTTP/2 stream, as a connection for the app's handlers."""

    __slots__ = ("session", "id", "current", "closed", "stream_started", "task", "_ended",
                 "_blocked", "_waiter", "_end_after")

    def __init__(self, session: H2Session, stream_id: int, request: Request) -> None:
        self.session, self.id, self.current = session, stream_id, request
        self.closed = False
        self.stream_started = False
        self.task: asyncio.Task | None = None
        self._ended = False
        self._blocked = bytearray()  # data waiting for flow-control window
        self._waiter: asyncio.Future | None = None
        self._end_after = False

    @property
    def write_paused(self) -> bool:
        return bool(self._blocked) or self.session.paused

    def _headers(self, status, content_type, headers, length):
        out = [(b":status", str(status).encode())]
        if content_type:
            out.append((b"content-type", content_type.encode("latin-1")))
        if length is not None:
            out.append((b"content-length", str(length).encode()))
        out.append((b"date", _date.get().encode()))
        for name, value in headers:
            name = name.lower()
            if name in ("connection", "transfer-encoding", "keep-alive"):
                continue
            out.append((name.encode("latin-1"), _sanitize(str(value)).encode("latin-1",
                                                                              "replace")))
        return out

    def send_response(self, resp: Response) -> None:
        if self.closed:
            return
        body = b"" if self.current.method == "HEAD" else resp.body
        h2c = self.session.h2
        h2c.send_headers(self.id, self._headers(resp.status, resp.content_type, resp.headers,
                                                len(resp.body)), end_stream=not body)
        if body:
            self._write(body, end=True)
        else:
            self._done()
        self.session.flush()

    def start_stream(self, status: int, content_type: str,
                     headers: list[tuple[str, str]]) -> None:
        self.stream_started = True
        self.session.h2.send_headers(self.id, self._headers(status, content_type, headers,
                                                            None))
        self.session.flush()

    def send_chunk(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._write(data)
        self.session.flush()

    def _write(self, data: bytes, end: bool = False) -> None:
        h2c = self.session.h2
        if not self._blocked and len(data) <= min(h2c.local_flow_control_window(self.id),
                                                  h2c.max_outbound_frame_size):
            h2c.send_data(self.id, data, end_stream=end)  # an event: one frame, at once
            if end:
                self._done()
            return
        self._blocked += data
        self._end_after = self._end_after or end
        self.window_opened()

    def window_opened(self) -> None:
        """Send what the windows allow of what is held back (frames of at most the peer's
        frame size); the rest waits for the peer's WINDOW_UPDATE."""
        if not self._blocked or self.closed:
            return
        h2c = self.session.h2
        while self._blocked:
            window = min(h2c.local_flow_control_window(self.id), h2c.max_outbound_frame_size)
            if window <= 0:
                return
            piece = bytes(self._blocked[:window])
            del self._blocked[:window]
            last = not self._blocked and self._end_after
            h2c.send_data(self.id, piece, end_stream=last)
            if last:
                self._done()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        while self.write_paused and not self.closed:
            self._waiter = self.session.loop.create_future()
            await self._waiter

    def end_stream(self) -> None:
        if self.closed:
            return
        if self._blocked:
            self._end_after = True
            return
        self.session.h2.end_stream(self.id)
        self._done()
        self.session.flush()

    def _done(self) -> None:
        self._ended = True
        self.closed = True
        self.session.exchanges.pop(self.id, None)
        self.session.released()

    def close(self) -> None:
        """Mid-answer: reset this stream only (the ``cut`` fault over HTTP/2)."""
        if self.closed:
            return
        self.closed = True
        self._wake()
        session = self.session
        session.exchanges.pop(self.id, None)
        if not session.closed:
            try:
                session.h2.reset_stream(self.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.H2Error:
                pass
            session.flush()
        session.released()

    def reset(self) -> None:
        """Drop the whole connection (the ``reset`` fault): every stream on it is lost."""
        self.closed = True
        self.session.abort()

    def write_raw(self, data: Any) -> None:
        if isinstance(data, _PartialHead) and not self.closed:
            self.session.h2.send_headers(self.id, self._headers(
                data.status, data.content_type, data.headers, data.length))
            if data.data:
                self._write(data.data)
            self.session.flush()

    def head_bytes(self, status, content_type, headers, length) -> _PartialHead:
        return _PartialHead(status, content_type, headers, length)

    def cancelled(self) -> None:
        """The client reset the stream (or the connection went away)."""
        self.closed = True
        self._wake()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class H2Session:
    """The HTTP/2 side of one stand-in connection (taking over its transport)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, transport: Any,
                 scheme: str, max_body: int, max_streams: int | None = None) -> None:
        self.app, self.loop, self.transport = app, loop, transport
        self.scheme, self.max_body = scheme, max_body
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            _S.MAX_CONCURRENT_STREAMS: max_streams or MAX_STREAMS,
            _S.INITIAL_WINDOW_SIZE: 1 << 20, _S.MAX_HEADER_LIST_SIZE: 1 << 20})
        self.exchanges: dict[int, H2Exchange] = {}
        self.bodies: dict[int, tuple[Request, bytearray]] = {}
        self.closed = False
        self.paused = False
        self.going_away = False
        self.last_stream = 0  # the last stream served after GOAWAY
        SESSIONS.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window((1 << 24) - 65535)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def feed(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error: %s", exc)
            self.flush()
            self.abort()
            return
        for event in events:
            if type(event) is _DataReceived:
                entry = self.bodies.get(event.stream_id)
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
                if entry is not None:
                    entry[1].extend(event.data)
                    if len(entry[1]) > self.max_body:
                        self.bodies.pop(event.stream_id)
                        self._answer_now(event.stream_id, entry[0], Response(
                            413, error_body("Request body too large.")))
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                entry = self.bodies.pop(event.stream_id, None)
                if entry is not None:
                    entry[0].body = bytes(entry[1])
                    self._dispatch(event.stream_id, entry[0])
            elif isinstance(event, h2.events.StreamReset):
                self.bodies.pop(event.stream_id, None)
                exchange = self.exchanges.pop(event.stream_id, None)
                if exchange is not None:
                    exchange.cancelled()
            elif isinstance(event, (h2.events.WindowUpdated,
                                    h2.events.RemoteSettingsChanged)):
                for exchange in list(self.exchanges.values()):
                    exchange.window_opened()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.abort()
                return
        self.flush()

    def _request(self, event: h2.events.RequestReceived) -> None:
        method = path = ""
        headers: dict[str, str] = {}
        for name, value in event.headers:
            if name == b":method":
                method = value.decode("latin-1")
            elif name == b":path":
                path = value.decode("latin-1")
            elif name == b":authority":
                headers["host"] = value.decode("latin-1")
            elif not name.startswith(b":"):
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if self.going_away and event.stream_id > self.last_stream:
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        req = Request(method, path, "HTTP/2", headers, self.scheme)
        if event.stream_ended is not None:
            self._dispatch(event.stream_id, req)
        else:
            self.bodies[event.stream_id] = (req, bytearray())

    def _answer_now(self, stream_id: int, req: Request, resp: Response) -> None:
        exchange = H2Exchange(self, stream_id, req)
        self.exchanges[stream_id] = exchange
        exchange.send_response(resp)

    def _dispatch(self, stream_id: int, req: Request) -> None:
        exchange = H2Exchange(self, stream_id, req)
        self.exchanges[stream_id] = exchange
        try:
            result = self.app.handle(req)
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.path)
            result = Response(500, error_body("The stand-in failed.", "server_error"))
        if isinstance(result, Response):
            exchange.send_response(result)
        else:
            exchange.task = self.loop.create_task(self._run(exchange, result))

    async def _run(self, exchange: H2Exchange, handler: Any) -> None:
        try:
            result = await handler(exchange)
            if result is not None and not exchange.closed:
                exchange.send_response(result)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("async handler failed for %s %s", exchange.current.method,
                          exchange.current.path)
            if not exchange.closed:
                if exchange.stream_started:
                    exchange.close()
                else:
                    exchange.send_response(
                        Response(500, error_body("The stand-in failed.", "server_error")))
        finally:
            exchange.task = None

    def goaway(self) -> None:
        """GOAWAY (NO_ERROR): no new streams; those in flight finish, then the connection
        closes."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        # Written beside h2's state machine, which has no graceful GOAWAY (it would refuse
        # to send another DATA frame): the streams up to ``last`` go on being answered.
        from hyperframe.frame import GoAwayFrame

        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream = self.h2.highest_inbound_stream_id
        frame.error_code = 0
        self.transport.write(frame.serialize())
        self.released()

    def released(self) -> None:
        if self.going_away and not self.exchanges and not self.closed:
            self.flush()  # the last stream's end first
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()
        self.lost()

    def lost(self) -> None:
        self.closed = True
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange.cancelled()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for exchange in list(self.exchanges.values()):
            exchange._wake()
