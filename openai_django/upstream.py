"""The one HTTP client to the upstream API.

One pooled keep-alive ``urllib3.PoolManager`` per process, a timeout on every call, the base URL
and key from settings and a User-Agent carrying the package version. urllib3 is used directly
rather than through ``requests``: it costs less per call on the hot path and its ``read1`` lets
a stream be relayed exactly as the upstream's bytes arrive.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from openai_django import __version__
from openai_django.conf import app_settings
from openai_django.errors import UpstreamTimeout, UpstreamUnavailable

logger = logging.getLogger("openai_django.upstream")

USER_AGENT = f"openai-django/{__version__}"

_client = None
_client_lock = threading.Lock()


@dataclass
class UpstreamResponse:
    status: int
    headers: dict  # lower-case names
    body: bytes = b""
    first_byte_ms: float = 0.0
    elapsed_ms: float = 0.0
    raw: object = field(default=None, repr=False)  # the open urllib3 response of a stream

    @property
    def content_type(self):
        return self.headers.get("content-type", "")

    @property
    def is_event_stream(self):
        return self.content_type.startswith("text/event-stream")


class UpstreamClient:
    def __init__(self, base_url, api_key, *, organization=None, connect_timeout=10.0,
                 read_timeout=600.0, pool_size=64):
        self.base_url = base_url.rstrip("/")
        self.base_path = urlsplit(self.base_url).path.rstrip("/")
        self.api_key = api_key
        self.organization = organization
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # Connection errors before anything was sent are safe to retry once; nothing else is.
        self.retries = urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0,
                                     raise_on_status=False)
        self.pool = urllib3.PoolManager(num_pools=4, maxsize=pool_size, block=False,
                                        retries=self.retries, timeout=self.timeout)

    def url(self, path, query=""):
        url = self.base_url + path
        return f"{url}?{query}" if query else url

    def _headers(self, headers, content_type):
        out = {"User-Agent": USER_AGENT}
        if headers:
            out.update(headers)
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        if self.organization and "openai-organization" not in {k.lower() for k in out}:
            out["OpenAI-Organization"] = self.organization
        if content_type:
            out["Content-Type"] = content_type
        return out

    def send(self, method, path, *, query="", headers=None, body=None, content_type=None,
             stream=False):
        """Send one request. With ``stream=True`` the body is left unread in ``.raw``.

        Raises :class:`UpstreamUnavailable` or :class:`UpstreamTimeout`; an HTTP error status is
        a normal response, passed through by the caller.
        """
        start = time.perf_counter()
        try:
            raw = self.pool.request(
                method, self.url(path, query), body=body,
                headers=self._headers(headers, content_type),
                preload_content=False, decode_content=True, redirect=False,
            )
        except NewConnectionError as exc:
            # Checked first: urllib3 makes NewConnectionError a subclass of
            # ConnectTimeoutError, but a refused connection is not a timeout.
            raise UpstreamUnavailable(
                f"The upstream API could not be reached: {_reason(exc)}"
            ) from exc
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise UpstreamTimeout(
                f"The upstream API did not answer within the timeout: {_reason(exc)}"
            ) from exc
        except MaxRetryError as exc:
            if isinstance(exc.reason, (ConnectTimeoutError, ReadTimeoutError)) and not \
                    isinstance(exc.reason, NewConnectionError):
                raise UpstreamTimeout(
                    f"The upstream API did not answer within the timeout: {_reason(exc)}"
                ) from exc
            raise UpstreamUnavailable(
                f"The upstream API could not be reached: {_reason(exc)}"
            ) from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            raise UpstreamUnavailable(
                f"The upstream API could not be reached: {_reason(exc)}"
            ) from exc
        first_byte = (time.perf_counter() - start) * 1000
        headers_out = {k.lower(): v for k, v in raw.headers.items()}
        response = UpstreamResponse(status=raw.status, headers=headers_out,
                                    first_byte_ms=first_byte)
        if stream and headers_out.get("content-type", "").startswith("text/event-stream"):
            response.raw = raw
            return response
        try:
            response.body = raw.read()
        except ReadTimeoutError as exc:
            raise UpstreamTimeout("The upstream API stopped sending its response.") from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            raise UpstreamUnavailable(
                f"The upstream API broke off its response: {_reason(exc)}"
            ) from exc
        finally:
            raw.release_conn()
        response.elapsed_ms = (time.perf_counter() - start) * 1000
        return response


def _reason(exc):
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    # urllib3 puts the pool object's repr in its messages; keep what a person can act on.
    if ": " in text and "HTTPConnection" in text:
        text = text.split(": ", 1)[1]
    return text


def get_client():
    """The process-wide upstream client, built on first use from settings."""
    global _client
    client = _client
    if client is None:
        with _client_lock:
            if _client is None:
                _client = UpstreamClient(
                    app_settings.BASE_URL,
                    app_settings.API_KEY,
                    organization=app_settings.ORGANIZATION,
                    connect_timeout=app_settings.CONNECT_TIMEOUT,
                    read_timeout=app_settings.READ_TIMEOUT,
                    pool_size=app_settings.POOL_SIZE,
                )
            client = _client
    return client


def reset_client():
    global _client
    with _client_lock:
        old, _client = _client, None
    if old is not None:
        old.pool.clear()


def iter_stream(raw, chunk_size=65536):
    """Yield the upstream's bytes as they arrive (one socket read at a time, no waiting for a
    full buffer), so the client sees each event when the upstream sent it."""
    try:
        while True:
            chunk = raw.read1(chunk_size)
            if not chunk:
                return
            yield chunk
    finally:
        raw.release_conn()


class SSEParser:
    """Split a byte stream into server-sent events; keeps what a record needs."""

    def __init__(self):
        self._buffer = b""
        self.events = []  # the ``data`` payload of each event, as text
        self.done = False

    def feed(self, chunk):
        self._buffer += chunk
        if b"\r" in self._buffer:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            block, self._buffer = self._buffer[:end], self._buffer[end + 2:]
            data = [
                line[5:].lstrip(b" ") if line.startswith(b"data:") else None
                for line in block.split(b"\n")
            ]
            data = [d for d in data if d is not None]
            if not data:
                continue
            payload = b"\n".join(data).decode("utf-8", "replace")
            if payload.strip() == "[DONE]":
                self.done = True
            else:
                self.events.append(payload)

    @property
    def leftover(self):
        return self._buffer
