"""HTTP/2 to the upstream, for the async client (``HTTP2`` / an upstream's ``"http2"``).

Many streams share a few connections: an ASGI worker holding 10,000 open streams needs 10,000
client sockets and, over HTTP/2, ``10,000 / MAX_CONCURRENT_STREAMS`` upstream ones (100 for a
server that allows 100 streams a connection) instead of 10,000 more. Framing is the ``h2``
library's (python-hyper: HPACK, the state machines, flow control bookkeeping); the sockets,
timers and pooling are ours, on ``asyncio.Protocol`` (no stream reader in between).

- ``https``: ALPN offers ``h2`` then ``http/1.1``; a server that picks HTTP/1.1 (or none)
  gets HTTP/1.1, on that very connection (handed to the HTTP/1.1 pool), and the origin is
  remembered as HTTP/1.1 for the client's life. ``http``: prior-knowledge h2c (RFC 9113 §3.3).
- The same guarantees as the HTTP/1.1 path: a connect timeout (TCP, TLS and the server's
  first SETTINGS), ``READ_TIMEOUT`` on the answer's head and on every wait for more of its
  body (checked by one sweep timer per pool, not a timer per event), the same errors
  (:class:`UpstreamUnavailable` → 502, :class:`UpstreamTimeout` → 504) with the same messages.
- A stream closed early (the client went away) resets only its own HTTP/2 stream
  (``RST_STREAM CANCEL``); the connection and its other streams go on.
- Flow control: a big receive window (16 MiB a connection, 1 MiB a stream), given back
  (``WINDOW_UPDATE``) as the relay consumes the data, so a stalled client stalls only its own
  stream; request bodies are sent as the server's windows allow.
- ``MAX_CONCURRENT_STREAMS`` is respected: a connection that is full makes the pool open
  another. ``GOAWAY``: new streams go to a new connection, streams the server will still
  answer finish, those it never saw (above its last stream id) are sent again on a new
  connection (they were not processed: RFC 9113 §6.8), as is a stream refused with
  ``REFUSED_STREAM``. A lost connection fails only its own streams.
- Proxies: a pool with a proxy stays on HTTP/1.1 (the setting is ignored there).
"""

import asyncio
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from openai_django.errors import UpstreamTimeout, UpstreamUnavailable
from openai_django.transport.aio import _timed

logger = logging.getLogger("openai_django.transport")

CONNECTION_WINDOW = 1 << 24
STREAM_WINDOW = 1 << 20
ACK_EVERY = 1 << 14
# Streams a connection is assumed to allow until the server's SETTINGS say (RFC 9113
# recommends at least 100).
ASSUMED_STREAMS = 100

_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                    validate_inbound_headers=False,
                                    normalize_inbound_headers=False)
_S = h2.settings.SettingCodes
_DataReceived = h2.events.DataReceived
_ResponseReceived = h2.events.ResponseReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                         b"transfer-encoding", b"upgrade", b"host", b"te", b"content-length"))


class Refused(Exception):
    """The server did not process the stream (REFUSED_STREAM, or above a GOAWAY's last
    stream id): it may be sent again."""


class NotSent(Exception):
    """No connection could be had, or the server refused the stream every time: the request
    was not processed (``error``: why), so a fallback upstream may be asked."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class StreamError(Exception):
    """The server reset the stream, or the connection went away under it."""


class H2Stream:
    """One request/answer exchange on a connection: the answer's head, then its data as
    it arrives (``await stream.next()``, ``None`` at the end)."""

    __slots__ = ("conn", "id", "head", "chunks", "waiter", "ended", "error", "wait_since",
                 "pending_ack", "__weakref__")

    def __init__(self, conn, stream_id):
        self.conn, self.id = conn, stream_id
        self.head = conn.loop.create_future()
        self.chunks = []  # (data, flow-controlled length), oldest first
        self.waiter = None
        self.ended = False
        self.error = None  # an exception: reset, connection lost, timed out
        self.wait_since = 0.0
        self.pending_ack = 0

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self):
        """The next piece of the body, or ``None`` once it ended; raises the stream's error
        (``TimeoutError`` past the read timeout with nothing new)."""
        while True:
            chunks = self.chunks
            if chunks:
                data, length = chunks.pop(0)
                # The window is given back as the data is consumed, in steps of ACK_EVERY
                # (not a call into h2 per event; 100 streams a connection hold at most
                # 1.6 MiB of the 16 MiB connection window unacknowledged).
                self.pending_ack += length
                if self.pending_ack >= ACK_EVERY:
                    self._ack()
                return data
            if self.error is not None:
                raise self.error
            if self.ended:
                if self.pending_ack:
                    self._ack()  # the connection's window (the stream is closed)
                return None
            self.waiter = self.conn.loop.create_future()
            self.wait_since = self.conn.loop.time()
            self.conn.pool.watch()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def _ack(self):
        length, self.pending_ack = self.pending_ack, 0
        conn = self.conn
        if length and not conn.closed:
            conn.h2.acknowledge_received_data(length, self.id)
            conn.flush()

    def reset(self):
        """Cancel this stream only (the client went away)."""
        conn = self.conn
        if self.error is None and not self.ended:
            self.error = StreamError("stream closed by the gateway")
        open_ = conn.streams.pop(self.id, None) is not None
        if conn.closed:
            return
        if open_:
            try:
                conn.h2.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:  # already closed on the wire
                pass
        # What it received and nobody will read: back to the connection's window.
        unread = self.pending_ack + sum(length for _, length in self.chunks)
        self.pending_ack, self.chunks = 0, []
        if unread:
            conn.h2.acknowledge_received_data(unread, self.id)
        conn.flush()
        if open_:
            conn.released()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to the upstream, shared by many streams."""

    def __init__(self, pool):
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            _S.ENABLE_PUSH: 0, _S.MAX_CONCURRENT_STREAMS: 100,
            _S.INITIAL_WINDOW_SIZE: STREAM_WINDOW, _S.MAX_HEADER_LIST_SIZE: 1 << 20})
        self.transport = None
        self.streams = {}  # stream id -> H2Stream
        self.ready = self.loop.create_future()  # the server's first SETTINGS arrived
        self.max_streams = ASSUMED_STREAMS
        self.pending = 0  # streams promised to callers waiting for ``ready``
        self.closed = False
        self.goaway = False
        self.http11 = None  # what ALPN chose when it was not h2
        self._paused = False
        self._writable = None  # a future while the socket's write buffer is full
        self._window = None  # a future while a body waits for flow-control window

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # TLS: the handshake is done, ALPN has spoken
            chosen = ssl_object.selected_alpn_protocol()
            if chosen != "h2":
                self.http11 = chosen or "no protocol"
                return
        h2c = self.h2
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data):
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(StreamError(f"HTTP/2 protocol error: {exc}"))
            self.transport.abort()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is _DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if event.data:  # (END_STREAM may come on an empty DATA frame)
                        stream.chunks.append((event.data, event.flow_controlled_length))
                        stream._wake()
                else:  # a stream we reset: give the window back at once
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
            elif kind is _StreamEnded:
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.ended = True
                    stream._wake()
                    self.released()
            elif kind is _ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None and not stream.head.done():
                    stream.head.set_result(event.headers)
            else:
                self._other(event)
        self.flush()

    def _other(self, event):
        if isinstance(event, _StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                code = event.error_code
                if code == h2.errors.ErrorCodes.REFUSED_STREAM and not stream.head.done():
                    stream.error = Refused("the upstream refused the stream")
                else:
                    name = getattr(code, "name", code)
                    stream.error = StreamError(f"the upstream reset the stream ({name})")
                self._fail(stream)
                self.released()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(_S.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_streams = changed.new_value
            if not self.ready.done():
                self.ready.set_result(None)
            self._wake_window()
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_window()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            logger.info("The upstream sent GOAWAY (%s, last stream %s); new streams go to a "
                        "new connection", getattr(event.error_code, "name", event.error_code),
                        last)
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                stream.error = Refused("the upstream is closing the connection (GOAWAY)")
                self._fail(stream)
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR and self.streams:
                # RFC 9113 §6.8: the streams up to ``last`` are still answered. h2 has no
                # graceful GOAWAY (its connection state is CLOSED now and would refuse their
                # DATA frames): the state goes back to open; no new stream is opened here.
                self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                for stream in list(self.streams.values()):
                    stream.error = StreamError(
                        f"the upstream closed the connection ({event.error_code.name})")
                    self._fail(stream)
                self.streams.clear()
            self.released()
        # Informational answers, trailers, pings (answered by h2), settings acks: nothing.

    def _fail(self, stream):
        if not stream.head.done():
            stream.head.set_exception(stream.error)
            stream.head.exception()  # retrieved: no "never retrieved" warning if unawaited
        stream._wake()

    def connection_lost(self, exc):
        self._lost(StreamError(f"connection lost{f': {exc}' if exc else ''}"))

    def _lost(self, error):
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError(
                f"no HTTP/2 from the upstream ({error}; HTTP2 is on: h2c for http, h2 by "
                f"ALPN for https)"))
            self.ready.exception()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.error = error
            self._fail(stream)
        self._wake_writable()
        self._wake_window()

    def pause_writing(self):
        self._paused = True

    def resume_writing(self):
        self._paused = False
        self._wake_writable()

    def _wake_writable(self):
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_window(self):
        waiter, self._window = self._window, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the pool and streams use -----------------------------------------------------------

    def flush(self):
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    @property
    def room(self):
        if self.closed or self.goaway:
            return 0
        return self.max_streams - len(self.streams) - self.pending

    def released(self):
        """A stream ended: the pool may use the room; a connection going away closes when
        its last stream ends."""
        if self.goaway and not self.streams and not self.closed:
            self.close()

    def open_stream(self, headers, end_stream):
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        return stream

    async def send_body(self, stream, body):
        """Send the request body as the windows allow, then END_STREAM."""
        view = memoryview(body)
        h2c = self.h2
        while True:
            if self.closed or stream.error is not None:
                raise stream.error or StreamError("connection lost")
            window = min(h2c.local_flow_control_window(stream.id), h2c.max_outbound_frame_size)
            if window >= len(view):
                h2c.send_data(stream.id, bytes(view), end_stream=True)
                self.flush()
                return
            if window > 0:
                h2c.send_data(stream.id, bytes(view[:window]))
                view = view[window:]
                self.flush()
            if self._paused:
                self._writable = self._writable or self.loop.create_future()
                await self._writable
            elif window <= 0:
                self._window = self._window or self.loop.create_future()
                await self._window

    def close(self):
        if not self.closed:
            try:
                self.h2.close_connection()
                self.flush()
            except h2.exceptions.H2Error:
                pass
            self.transport.close()


class H2Pool:
    """The HTTP/2 connections to one origin: a stream goes on the newest connection with
    room; a new connection is opened when none has any (callers arriving while it is being
    opened wait for it rather than each opening one)."""

    def __init__(self, http11_pool, authority):
        self.h1 = http11_pool  # the HTTP/1.1 pool: timeouts, TLS context, the fallback
        self.authority = authority.encode("latin-1")
        self.scheme = http11_pool.scheme.encode()
        self.connections = []
        self.opened = 0
        self.http11_only = False  # the server picked HTTP/1.1 in ALPN
        self._sweep = None
        ctx = http11_pool._context
        if ctx is not None:
            try:
                ctx.set_alpn_protocols(["h2", "http/1.1"])
            except NotImplementedError:  # pragma: no cover - OpenSSL without ALPN
                self.http11_only = True

    @property
    def read_timeout(self):
        return self.h1.read_timeout

    async def connection(self):
        """A connection with room for one more stream (opened if need be), or ``None`` when
        the origin speaks HTTP/1.1 only (then the caller uses the HTTP/1.1 pool)."""
        while True:
            for conn in reversed(self.connections):
                if conn.room > 0:
                    if conn.ready.done():
                        return conn
                    conn.pending += 1
                    try:
                        await conn.ready
                    finally:
                        conn.pending -= 1
                    if conn.room > 0:
                        return conn
                    break  # its limit is lower than assumed: look again
            else:
                if self.http11_only:
                    return None
                conn = await self._open()
                if conn is None:
                    return None
                if conn.room > 0:
                    return conn

    async def _open(self):
        pool = self.h1
        loop = asyncio.get_running_loop()
        conn = H2Connection(self)
        self.connections.append(conn)
        kwargs = {}
        if pool._context is not None:
            kwargs.update(ssl=pool._context, server_hostname=pool.host,
                          ssl_handshake_timeout=pool.connect_timeout)
        try:
            await _timed(loop.create_connection(lambda: conn, pool.host, pool.port, **kwargs),
                         pool.connect_timeout)
            if conn.http11:
                self._downgrade(conn)
                return None
            await _timed(asyncio.shield(conn.ready), pool.connect_timeout)
        except BaseException as exc:
            self.forget(conn)
            if not conn.ready.done():
                conn.ready.set_exception(exc if isinstance(exc, Exception)
                                         else ConnectionResetError("cancelled"))
                conn.ready.exception()
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()
            raise
        self.opened += 1
        return conn

    def _downgrade(self, conn):
        """The server did not pick h2 in ALPN: this origin is HTTP/1.1 from now on (the
        connection just opened is closed unused: nothing was written on it)."""
        logger.info("The upstream %s chose %s in ALPN: HTTP/1.1", self.authority.decode(),
                    conn.http11)
        self.http11_only = True
        self.forget(conn)
        conn.closed = True
        if not conn.ready.done():
            conn.ready.set_exception(ConnectionResetError("HTTP/1.1 origin"))
            conn.ready.exception()
        conn.transport.close()

    def forget(self, conn):
        try:
            self.connections.remove(conn)
        except ValueError:
            pass

    def watch(self):
        """Arm the read-timeout sweep (one timer for the pool's streams)."""
        if self._sweep is None:
            interval = min(1.0, max(0.02, self.read_timeout / 10))
            self._sweep = asyncio.get_running_loop().call_later(interval, self._check)

    def _check(self):
        self._sweep = None
        loop = asyncio.get_running_loop()
        limit = loop.time() - self.read_timeout
        waiting = False
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                if stream.waiter is not None:
                    if stream.wait_since <= limit:
                        stream.error = TimeoutError("read timed out")
                        stream._wake()
                    else:
                        waiting = True
        if waiting:
            self.watch()

    def clear(self):
        for conn in list(self.connections):
            if not conn.streams:
                conn.close()

    def request_headers(self, method, target, header_lines):
        """The HTTP/2 header list: pseudo-headers, then the HTTP/1.1 head's fields (lower
        case, hop-by-hop ones dropped; ``Host`` becomes ``:authority``)."""
        out = [(b":method", method.encode()), (b":scheme", self.scheme),
               (b":authority", self.authority), (b":path", target.encode("latin-1"))]
        for name, value in header_lines:
            lname = name.lower().encode("latin-1")
            if lname not in _HOP_BY_HOP:
                out.append((lname, value.encode("latin-1")))
        return out


async def send(pool, method, target, header_lines, body):
    """Send one request over HTTP/2: ``(stream, status, headers)``, or ``None`` when the
    origin speaks HTTP/1.1 only. Raises ``TimeoutError``/``OSError``/``StreamError`` (the
    caller maps them); a stream the server did not process is sent again, once, on
    another connection."""
    headers = pool.request_headers(method, target, header_lines)
    if body is not None or method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body) if body else 0).encode()))
    for attempt in (1, 2, 3):
        try:
            conn = await pool.connection()
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            raise NotSent(exc) from exc
        if conn is None:
            return None
        try:
            stream = conn.open_stream(headers, end_stream=not body)
        except h2.exceptions.TooManyStreamsError:
            conn.max_streams = len(conn.streams)
            continue
        except h2.exceptions.H2Error as exc:
            raise StreamError(str(exc)) from exc
        try:
            if body:
                await conn.send_body(stream, body)
            else:
                conn.flush()
            raw = await _timed(stream.head, pool.read_timeout)
        except Refused:
            if attempt < 3:
                logger.debug("HTTP/2 stream %s not processed; sent again", stream.id)
                continue
            raise NotSent(StreamError("the upstream refused the stream")) from None
        except BaseException:
            stream.reset()
            raise
        status = 0
        out = {}
        for name, value in raw:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                key = name.decode("latin-1").lower()
                value = value.decode("latin-1")
                out[key] = f"{out[key]}, {value}" if key in out else value
        return stream, status, out
    raise NotSent(StreamError("the upstream refused the stream"))


class H2StreamHandle:
    """An event-stream body over HTTP/2, as :class:`~openai_django.transport.aio.
    AsyncStreamHandle`: ``async for chunk in handle``; :meth:`aclose` resets this stream
    only."""

    __slots__ = ("_stream",)

    def __init__(self, stream):
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self):
        stream = self._stream
        if stream is None:
            raise StopAsyncIteration
        try:
            data = await stream.next()
        except TimeoutError as exc:
            self._drop()
            raise UpstreamTimeout("The upstream API stopped sending its stream.") from exc
        except (StreamError, Refused, OSError) as exc:
            self._drop()
            raise UpstreamUnavailable(f"The upstream API broke off its stream: {exc}") from exc
        except BaseException:
            self._drop()
            raise
        if data is None:
            self._stream = None
            raise StopAsyncIteration
        return data

    def _drop(self):
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.reset()

    async def aclose(self):
        self._drop()

    @property
    def closed(self):
        return self._stream is None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        self._drop()


async def read_body(stream):
    parts = []
    while True:
        data = await stream.next()
        if data is None:
            return b"".join(parts)
        parts.append(data)
