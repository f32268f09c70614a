"""The async upstream client: HTTP/1.1 keep-alive connections on ``asyncio`` streams.

The same guarantees as the sync :mod:`openai_django.upstream` client, for ASGI views: one
client per event loop, a pool of keep-alive connections (at most ``POOL_SIZE`` idle ones kept;
a call never waits for a free one), a connect timeout and ``READ_TIMEOUT`` on every read (the
answer's head, each piece of a body, each chunk of a stream), HTTPS through
``ssl.create_default_context()`` (certificate and host name checked), the User-Agent carrying
the package version, the key and organization from settings, and every failure raised as
:class:`~openai_django.errors.UpstreamUnavailable` or
:class:`~openai_django.errors.UpstreamTimeout` with the sync client's messages. A request the
upstream may have received is never sent twice.

Why a client of our own: measured on this path, ``python -m bench.async_client_bench``
(one process, one default asyncio loop, against ``StandinServer(fast=True)`` in its own
process, each pinned to one of the 2 vCPUs; POST ``/v1/chat/completions``; streams of 20
events paced 5 ms to the first, 2 ms apart; Python 3.11, 2026-12-01, the machine shared with
other work at load average about 2, so p99 and the stream gaps carry scheduling noise)::

    client         c=1 p50  c=1 p99  CPU/call  c=32 calls/s  CPU/call  c=256 calls/s  TTFE+
    own            177 us   4.3 ms    114 us      10,231       43 us      11,770      0.70 ms
    aiohttp 3.14   271 us   4.4 ms    198 us       6,810      100 us       5,291      0.92 ms
    httpx 0.28     811 us   6.1 ms    803 us         601    1,473 us         350      2.34 ms
    httpx2 2.16    634 us   6.6 ms    640 us       1,034      614 us         418      8.02 ms

A second run minutes later (own, aiohttp, httpx): c=1 p50 171 / 242 / 771 us, CPU per call
119 / 177 / 772 us, c=32 9,170 / 5,918 / 545 calls/s, c=256 13,734 / 4,670 / 382 calls/s.
Over TLS (``--tls``, the stand-in's certificate trusted; the real upstream's path): c=1 p50
234 / 355 / 857 us, CPU per call 131 / 254 / 853 us, c=32 14,954 / 7,728 / 429 calls/s,
c=256 15,175 / 4,308 / 246 calls/s.
(TTFE+: time to the first event beyond the stand-in's 5 ms; the mean gap between events was
0.21-0.31 ms over the 2 ms pacing for all of them, the scheduler's share; no errors anywhere.)
aiohttp is the well-kept candidate and correct here, but it spends 1.5-1.7x our CPU per call
at c=1 and 2.2-2.3x at c=32 (its session, tracing hooks, cookie jar and ``ClientResponse`` on
every call; 60-80 us more a call, about 0.1 of a core at 1,500 calls a second) and gives a
third to a half of our throughput at c=256, and it would be a new compiled dependency with
five of its own. httpx's async client (httpcore on anyio) costs 6.5-7x ours and loses 30-40%
of its throughput from c=32 to c=256, as PERF.md found. What we keep instead is small: the
framing rules of RFC 9112 a JSON API answer uses (``Content-Length``, chunked, read to close;
1xx skipped; no upgrades, no pipelining, no compression asked for: ``Accept-Encoding:
identity`` as ``http.client`` sends).
"""

import asyncio
import logging
import re
import select
import socket
import ssl
import sys
import threading
import time
import weakref
from urllib.parse import urlsplit

from django.core.signals import setting_changed

from openai_django.errors import UpstreamTimeout, UpstreamUnavailable
from openai_django.upstream import UpstreamResponse, client_options, request_headers

logger = logging.getLogger("openai_django.transport")

# The longest head (status line and headers) or chunk-size line accepted from the upstream.
MAX_LINE = 1 << 20
READ_SIZE = 1 << 16
# A body up to this size goes out in the same write as the head; a larger one is not copied.
SMALL_BODY = 1 << 16
# As http.client: no control characters or spaces in the request target.
_BAD_TARGET = re.compile("[\x00-\x20\x7f]").search
_NO_BODY_STATUS = frozenset((204, 304))

if sys.version_info >= (3, 11):
    async def _timed(awaitable, seconds):
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def _timed(awaitable, seconds):
        return await asyncio.wait_for(awaitable, seconds)

_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class ProtocolError(Exception):
    """The upstream's answer is not HTTP/1.1 we can read."""


# What a connection that broke off, or an answer we cannot read, raises.
_BROKEN = (ProtocolError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


class Connection:
    """One keep-alive connection: its stream pair, and whether the current answer lets it be
    kept."""

    __slots__ = ("reader", "writer", "keep")

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.keep = False

    def dropped(self):
        """True if an idle connection was closed by the upstream (or has stray bytes)."""
        if self.reader.at_eof() or self.writer.transport.is_closing():
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()  # poll, not select: descriptors above 1024 with many streams
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))

    def close(self):
        """Drop the connection at once (no lingering close handshake: the upstream sees it
        go, and a request it is still answering stops)."""
        self.writer.transport.abort()


class AsyncConnectionPool:
    """Idle keep-alive connections to one origin, most recently used first.

    Like the sync pool it never blocks: a call that finds no idle connection opens one, and at
    most ``maxsize`` idle ones are kept. A stream holds its connection for its whole life, so
    a cap on open connections would make the thousandth stream wait for the first to end.
    """

    def __init__(self, scheme, host, port, *, connect_timeout, read_timeout, maxsize,
                 ssl_context=None, proxy=None):
        self.scheme, self.host, self.port = scheme, host, port
        self.proxy = proxy  # a proxies.Proxy: connections go through it (open_via_proxy)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self.opened = 0  # connections opened so far (tests and benchmarks read it)
        self._idle = []
        self._context = None
        if scheme == "https":
            self._context = ssl_context or ssl.create_default_context()

    async def get(self):
        """``(connection, reused)``: an idle connection still open, else a new one."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.dropped():
                return conn, True
            conn.close()
        return await self._new(), False

    async def _new(self):
        if self.proxy is not None:
            conn = await _timed(open_via_proxy(self), self.connect_timeout)
            self.opened += 1
            return conn
        kwargs = {"limit": MAX_LINE}
        if self._context is not None:
            kwargs.update(ssl=self._context, server_hostname=self.host,
                          ssl_handshake_timeout=self.connect_timeout)
        reader, writer = await _timed(asyncio.open_connection(self.host, self.port, **kwargs),
                                      self.connect_timeout)
        self.opened += 1
        return Connection(reader, writer)  # asyncio sets TCP_NODELAY on its TCP transports

    def put(self, conn):
        """Return a connection whose answer was read to its end (or close it)."""
        if conn.keep and len(self._idle) < self.maxsize and not conn.dropped():
            self._idle.append(conn)
        else:
            conn.close()

    def clear(self):
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def idle(self):
        return len(self._idle)


class AsyncStreamHandle:
    """The open body of a stream: ``async for chunk in handle`` yields the upstream's bytes
    (de-chunked) as they arrive, each read bounded by the read timeout.

    Read to its end, the connection goes back to the pool. :meth:`aclose` drops it at once
    (the client went away: the upstream sees the connection close and stops). Raises
    :class:`UpstreamTimeout` / :class:`UpstreamUnavailable` if the upstream stalls or breaks
    off the stream.
    """

    def __init__(self, pool, conn, framing, length):
        self._pool, self._conn = pool, conn
        self._body = _body_pieces(conn.reader, framing, length, pool.read_timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            return await self._body.__anext__()
        except StopAsyncIteration:
            self._conn = None
            self._pool.put(conn)
            raise
        except _TIMEOUTS as exc:
            self._drop()
            raise UpstreamTimeout("The upstream API stopped sending its stream.") from exc
        except _BROKEN as exc:
            self._drop()
            raise UpstreamUnavailable(
                f"The upstream API broke off its stream: {_reason(exc)}") from exc
        except BaseException:  # cancelled: the connection is mid-answer, never reused
            self._drop()
            raise

    def _drop(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self):
        """Drop the connection now; a read pending in another task ends at once."""
        self._drop()
        try:
            await self._body.aclose()
        except RuntimeError:  # being iterated by another task: it sees the close itself
            pass

    @property
    def closed(self):
        return self._conn is None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()


class AsyncUpstreamClient:
    """``await client.send(...)``: the sync client's :meth:`~UpstreamClient.send`, async."""

    def __init__(self, base_url, api_key, *, organization=None, connect_timeout=10.0,
                 read_timeout=600.0, pool_size=64, admin_api_key=None, ssl_context=None,
                 proxy=None, ca_bundle=None, client_cert=None, headers=None,
                 key_header=None, http2=False):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.base_path = parts.path.rstrip("/")
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        self.organization = organization
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname
        default_port = 443 if scheme == "https" else 80
        host_header = f"[{host}]" if ":" in host else host
        self.host_header = host_header if port == default_port else f"{host_header}:{port}"
        self.extra_headers, self.key_header = dict(headers or {}), key_header
        proxy, ssl_context = _proxy_and_tls(self, parts, proxy, ssl_context, ca_bundle,
                                            client_cert)
        self.pool = AsyncConnectionPool(scheme, host, port, connect_timeout=connect_timeout,
                                        read_timeout=read_timeout, maxsize=pool_size,
                                        ssl_context=ssl_context, proxy=proxy)
        # HTTP/2 (openai_django/transport/http2.py): h2 in ALPN for https, prior-knowledge
        # h2c for http; not through a proxy.
        self.h2pool = None
        if http2 and proxy is None:
            from openai_django.transport.http2 import H2Pool

            self.h2pool = H2Pool(self.pool, self.host_header)

    def target(self, path, query=""):
        target = self.base_path + path
        return f"{target}?{query}" if query else target

    def _head(self, method, target, headers, content_type, admin, body):
        out = request_headers(headers, content_type=content_type,
                              key=self.admin_api_key if admin else self.api_key,
                              organization=self.organization, key_header=self.key_header,
                              extra=self.extra_headers)
        names = {k.lower() for k in out}
        if _BAD_TARGET(target) or not method.isalpha():
            raise ValueError(f"invalid request line: {method!r} {target!r}")
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {self.host_header}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if body is not None else 0}")
        for name, value in out.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                line = f"{name}: {value}"
                if "\r" in line or "\n" in line:  # as http.client: no header injection
                    raise ValueError(f"invalid header {name!r}")
                lines.append(line)
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    async def send(self, method, path, *, query="", headers=None, body=None, content_type=None,
                   stream=False, admin=False):
        """Send one request. With ``stream=True`` and an event-stream answer the body is left
        unread in ``.raw`` (an :class:`AsyncStreamHandle`); ``admin`` sends
        ``ADMIN_API_KEY``.

        Raises :class:`UpstreamUnavailable` or :class:`UpstreamTimeout`; an HTTP error status
        is a normal response, passed through by the caller.
        """
        start = time.perf_counter()
        if isinstance(body, str):
            body = body.encode()
        elif body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            body = body.read()  # a file-like body, as http.client takes one
        h2pool = self.h2pool
        if h2pool is not None and not h2pool.http11_only:
            response = await self._send_h2(method, self.target(path, query), headers,
                                           content_type, admin, body, stream, start)
            if response is not None:
                return response
        request = self._head(method, self.target(path, query), headers, content_type, admin,
                             body)
        if body and len(body) <= SMALL_BODY:
            request, body = request + body, None  # one write, one segment
        conn, status, headers_out, framing, length = await self._request(method, request,
                                                                         body or None)
        response = UpstreamResponse(status=status, headers=headers_out,
                                    first_byte_ms=(time.perf_counter() - start) * 1000)
        if stream and headers_out.get("content-type", "").startswith("text/event-stream"):
            response.raw = AsyncStreamHandle(self.pool, conn, framing, length)
            return response
        try:
            response.body = await _read_body(conn.reader, framing, length,
                                             self.pool.read_timeout)
        except _TIMEOUTS as exc:
            conn.close()
            raise UpstreamTimeout("The upstream API stopped sending its response.") from exc
        except _BROKEN as exc:
            conn.close()
            raise UpstreamUnavailable(
                f"The upstream API broke off its response: {_reason(exc)}") from exc
        except BaseException:
            conn.close()
            raise
        self.pool.put(conn)
        response.elapsed_ms = (time.perf_counter() - start) * 1000
        return response

    def _fields(self, method, target, headers, content_type, admin):
        """The request's header fields as ``(name, value)`` pairs, checked as ``_head``
        checks them (HTTP/2 carries the same fields; ``Host`` is ``:authority``)."""
        out = request_headers(headers, content_type=content_type,
                              key=self.admin_api_key if admin else self.api_key,
                              organization=self.organization, key_header=self.key_header,
                              extra=self.extra_headers)
        if _BAD_TARGET(target) or not method.isalpha():
            raise ValueError(f"invalid request line: {method!r} {target!r}")
        fields = [] if any(k.lower() == "accept-encoding" for k in out) else [
            ("accept-encoding", "identity")]
        for name, value in out.items():
            value = str(value)
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"invalid header {name!r}")
            fields.append((name, value))
        return fields

    async def _send_h2(self, method, target, headers, content_type, admin, body, stream,
                       start):
        """:meth:`send` over HTTP/2; ``None`` when the origin turned out to speak HTTP/1.1
        only (then the caller sends over HTTP/1.1)."""
        from openai_django.transport import http2

        fields = self._fields(method, target, headers, content_type, admin)
        try:
            sent = await http2.send(self.h2pool, method, target, fields, body or None)
        except http2.NotSent as exc:  # no connection: a fallback may be asked
            raise _failure(exc.error, sent=False) from exc.error
        except (OSError, http2.StreamError, *_TIMEOUTS) as exc:
            raise _failure(exc) from exc
        if sent is None:
            return None
        h2stream, status, headers_out = sent
        response = UpstreamResponse(status=status, headers=headers_out,
                                    first_byte_ms=(time.perf_counter() - start) * 1000)
        if stream and headers_out.get("content-type", "").startswith("text/event-stream"):
            response.raw = http2.H2StreamHandle(h2stream)
            return response
        try:
            response.body = await http2.read_body(h2stream)
        except _TIMEOUTS as exc:
            h2stream.reset()
            raise UpstreamTimeout("The upstream API stopped sending its response.") from exc
        except (http2.StreamError, http2.Refused, OSError) as exc:
            h2stream.reset()
            raise UpstreamUnavailable(
                f"The upstream API broke off its response: {_reason(exc)}") from exc
        except BaseException:
            h2stream.reset()
            raise
        response.elapsed_ms = (time.perf_counter() - start) * 1000
        return response

    async def _request(self, method, request, body=None):
        """Write the request, read the answer's head: ``(conn, status, headers, framing,
        length)``.

        A connection that cannot be opened is tried once more (nothing was sent); a reused
        connection that fails while the request is being written is replaced once (the
        upstream closed it: it cannot have acted on a request it did not read). Nothing else
        is retried: a request the upstream may have received is never sent twice.
        """
        for attempt in (1, 2):
            try:
                conn, reused = await self.pool.get()
            except (OSError, ProtocolError, *_TIMEOUTS) as exc:
                if attempt == 1:
                    continue
                raise _failure(exc, sent=False) from exc
            try:
                conn.writer.write(request)
                if body is not None:
                    conn.writer.write(body)
                await conn.writer.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and attempt == 1:
                    logger.debug("A kept connection to the upstream failed on write (%s); "
                                 "sending on a new one.", _reason(exc))
                    continue
                raise _failure(exc) from exc
            except OSError as exc:
                conn.close()
                raise _failure(exc) from exc
            except BaseException:
                conn.close()
                raise
            try:
                return (conn, *await _read_head(conn, method, self.pool.read_timeout))
            except (*_BROKEN, *_TIMEOUTS) as exc:
                conn.close()
                raise _failure(exc) from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self):
        """Close the idle connections (streams still open keep theirs)."""
        self.pool.clear()
        if self.h2pool is not None:
            self.h2pool.clear()


# -- HTTP/1.1 framing -----------------------------------------------------------------------

CHUNKED, LENGTH, UNTIL_CLOSE = 1, 2, 3


async def _read_head(conn, method, timeout):
    """Read the status line and headers (skipping 1xx answers): ``(status, headers, framing,
    length)``, and whether the connection may be kept is set on ``conn.keep``."""
    reader = conn.reader
    while True:
        try:
            raw = await _timed(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("Remote end closed connection without response") \
                    from None
            raise
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("response head too long") from exc
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        if status < 100 or status >= 200 or status == 101:
            break
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep = ("close" not in connection if version == "HTTP/1.1"
            else "keep-alive" in connection)
    if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
        framing, length = LENGTH, 0
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        framing, length = CHUNKED, 0
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"].split(",")[0])
        except ValueError:
            raise ProtocolError("bad Content-Length") from None
        if length < 0:
            raise ProtocolError("bad Content-Length")
        framing = LENGTH
    else:
        framing, length, keep = UNTIL_CLOSE, 0, False
    conn.keep = keep
    return status, headers, framing, length


async def _read_body(reader, framing, length, timeout):
    """The whole body (each read bounded by ``timeout``)."""
    if framing == LENGTH:
        if length == 0:
            return b""
        # A small answer is usually whole in the buffer already: one read, one timer.
        data = await _timed(reader.read(length), timeout)
        if len(data) == length:
            return data
        if not data:
            raise asyncio.IncompleteReadError(b"", length)
        parts = [data]
        length -= len(data)
    else:
        parts = []
    async for piece in _body_pieces(reader, framing, length, timeout):
        parts.append(piece)
    return b"".join(parts)


async def _body_pieces(reader, framing, length, timeout):
    """Yield the body's bytes as they arrive (one read at a time), de-chunked."""
    if framing == LENGTH:
        while length > 0:
            data = await _timed(reader.read(min(length, READ_SIZE)), timeout)
            if not data:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(data)
            yield data
    elif framing == UNTIL_CLOSE:
        while True:
            data = await _timed(reader.read(READ_SIZE), timeout)
            if not data:
                return
            yield data
    else:
        while True:
            # A chunk (a stream event) up to READ_SIZE is read whole under one timer: its
            # size line, data and CRLF (a timer per read was 3 per event: the loop's timer
            # calls were a quarter of a 2,000-stream relay's CPU).
            left, data = await _timed(_small_chunk(reader), timeout)
            if data is not None:
                yield data
                continue
            if left == 0:
                while await _timed(reader.readuntil(b"\r\n"), timeout) != b"\r\n":
                    pass  # trailers, dropped (as http.client does)
                return
            while left > 0:
                data = await _timed(reader.read(min(left, READ_SIZE)), timeout)
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield data
            if await _timed(reader.readexactly(2), timeout) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")


def _chunk_size(line):
    size = line.split(b";", 1)[0].strip()
    try:
        return int(size, 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size {size[:20]!r}") from None


async def _small_chunk(reader):
    """``(size, data)`` of the next chunk: its data read whole (with the CRLF after it) when
    it is not larger than READ_SIZE, else ``None`` (the caller reads it in pieces)."""
    left = _chunk_size(await reader.readuntil(b"\r\n"))
    if left == 0 or left > READ_SIZE:
        return left, None
    data = await reader.readexactly(left + 2)
    if data[-2:] != b"\r\n":
        raise ProtocolError("chunk not followed by CRLF")
    return left, data[:-2]


def _reason(exc):
    if isinstance(exc, asyncio.IncompleteReadError):
        if exc.expected is None:
            return "connection closed in the middle of a line"
        return f"connection closed with {exc.expected} bytes still to come"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "line too long"
    return str(exc) or type(exc).__name__


def _failure(exc, sent=True):
    """The gateway error for a request that failed on its way to or from the upstream (the
    sync client's messages; ``sent=False``: no connection was made)."""
    if isinstance(exc, _TIMEOUTS):
        error = UpstreamTimeout(
            f"The upstream API did not answer within the timeout: {_reason(exc)}")
    else:
        error = UpstreamUnavailable(f"The upstream API could not be reached: {_reason(exc)}")
    error.unsent = not sent
    return error


# -- proxies and TLS options (openai_django/proxies.py) ---------------------------------------
#
# Apart from the hot path: a client without a proxy never comes here once it is built.


def _proxy_and_tls(client, parts, proxy, ssl_context, ca_bundle, client_cert):
    """``(Proxy or None, ssl context or None)`` for a client being built; plain HTTP through
    a proxy turns its targets into absolute form and adds the proxy's credentials."""
    from openai_django import proxies

    if ssl_context is None:
        ssl_context = proxies.ssl_context(ca_bundle, client_cert)
    proxy = proxies.proxy_for(client.base_url, proxy)
    if proxy is not None and (parts.scheme or "http") == "http":
        client.base_path = f"http://{parts.netloc.rsplit('@', 1)[-1]}{client.base_path}"
        client.extra_headers.update(proxy.header_dict)
    return proxy, ssl_context


async def open_via_proxy(pool):
    """A :class:`Connection` through ``pool.proxy``: for HTTPS a ``CONNECT`` tunnel, then TLS
    with the upstream inside it (certificate checked for the upstream's name); for HTTP the
    connection to the proxy itself.

    The tunnel is asked for on the bare socket, which is then handed to
    ``asyncio.open_connection(sock=..., ssl=...)`` (no ``start_tls``: Python 3.10 has none
    on streams). The upstream says nothing before the TLS handshake, so nothing beyond the
    proxy's answer can have been read with it.
    """
    proxy = pool.proxy
    if pool._context is None:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=MAX_LINE)
        return Connection(reader, writer)
    loop = asyncio.get_running_loop()
    sock = await _connect(loop, proxy.host, proxy.port)
    try:
        authority = f"[{pool.host}]:{pool.port}" if ":" in pool.host else \
            f"{pool.host}:{pool.port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in proxy.headers]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise ConnectionResetError("The proxy closed the connection during CONNECT")
            head += data
            if len(head) > MAX_LINE:
                raise ProtocolError("The proxy's answer to CONNECT is too long")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise OSError(f"Tunnel connection failed: {' '.join(parts[1:])[:100]}")
        if not head.endswith(b"\r\n\r\n"):
            raise ProtocolError("The proxy sent bytes after its answer to CONNECT")
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=pool._context, server_hostname=pool.host,
            ssl_handshake_timeout=pool.connect_timeout, limit=MAX_LINE)
    except BaseException:
        sock.close()
        raise
    return Connection(reader, writer)


async def _connect(loop, host, port):
    """A connected non-blocking TCP socket to ``host:port`` (each address in turn)."""
    failure = None
    for family, kind, proto, _, address in await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure or OSError(f"cannot resolve {host}")


# -- one client per event loop ----------------------------------------------------------------

_clients = weakref.WeakKeyDictionary()  # event loop -> AsyncUpstreamClient
_clients_lock = threading.Lock()


def get_async_client():
    """The running event loop's upstream client, built on first use from settings.

    Connections belong to the loop that opened them, so each loop (one per process under an
    ASGI server; one per ``asyncio.run`` in tests) has its own client and pool.
    """
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        from openai_django.conf import app_settings

        client = AsyncUpstreamClient(**client_options(), http2=bool(app_settings.HTTP2))
        with _clients_lock:
            client = _clients.setdefault(loop, client)
    return client


async def close_async_client():
    """Close the running loop's client and forget it (an ASGI lifespan shutdown, the end of a
    test's loop): its idle connections close now, not when the loop is collected."""
    with _clients_lock:
        client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def reset_async_client():
    """Forget every loop's client; their idle connections are closed in their own loop."""
    with _clients_lock:
        old = list(_clients.items())
        _clients.clear()
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, client in old:
        if loop is current:
            client.pool.clear()
            if client.h2pool is not None:
                client.h2pool.clear()
        elif not loop.is_closed():
            try:
                loop.call_soon_threadsafe(client.pool.clear)
                if client.h2pool is not None:
                    loop.call_soon_threadsafe(client.h2pool.clear)
            except RuntimeError:  # closed meanwhile
                pass


def _settings_changed(*, setting, **kwargs):
    if setting == "OPENAI_DJANGO":
        reset_async_client()


setting_changed.connect(_settings_changed, dispatch_uid="openai_django.transport.reset")
