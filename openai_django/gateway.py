"""One entry for every caller: run a call in sync, stream or background mode.

HTTP views, the Python API, Celery tasks and admin replays all build an :class:`Invocation`
and hand it here, so a call is recorded, sent and finished the same way whoever asked.
"""

import hashlib
import http.client
import logging
import time
from contextlib import closing
from dataclasses import dataclass, field

import orjson
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError
from urllib3.filepost import encode_multipart_formdata

from openai_django import recorder
from openai_django.conf import app_settings
from openai_django.errors import (
    OpenAIDjangoError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openai_django.models import Call
from openai_django.upstream import SSEParser, get_client, iter_stream

logger = logging.getLogger("openai_django.gateway")

# Response headers the client gets back besides the recorded ones.
PASS_HEADERS = ("content-type", "content-disposition")


@dataclass
class UploadedInput:
    """A file sent with a multipart call: in memory, an uploaded file, or a stored artifact."""

    field: str
    name: str
    content_type: str = "application/octet-stream"
    index: int = 0
    data: bytes | None = None
    file: object = None  # a Django UploadedFile or an Artifact's FieldFile

    def read(self):
        if self.data is None:
            source = self.file
            source.open("rb")
            try:
                source.seek(0)
                self.data = source.read()
            finally:
                if hasattr(source, "close") and not hasattr(source, "temporary_file_path"):
                    source.close()
        return self.data


@dataclass
class Invocation:
    """Everything needed to perform one call, whoever asked for it."""

    operation: object  # spec.Operation
    path_kwargs: dict = field(default_factory=dict)
    query: str = ""
    body: object = None  # parsed JSON body, or the form fields of a multipart body
    raw_body: bytes | None = None  # the JSON body exactly as the client sent it
    files: list = field(default_factory=list)  # [UploadedInput]
    headers: dict = field(default_factory=dict)  # forwarded headers, lower-case names
    user: object = None
    api_key: object = None
    mode: str = Call.Mode.SYNC
    source: str = Call.Source.HTTP
    replay_of_id: object = None
    idempotency_key: str = ""
    target: object = None
    callback: str = ""
    started: float = field(default_factory=time.perf_counter)

    @property
    def stream(self):
        if self.mode == Call.Mode.ASYNC or not self.operation.streamable:
            return False
        if isinstance(self.body, dict) and self.body.get("stream") is True:
            return True
        return "stream=true" in self.query.lower()

    def recorded_headers(self):
        return {k: v for k, v in self.headers.items() if k != "authorization"}

    def json_bytes(self):
        if self.raw_body is not None:
            return self.raw_body
        return orjson.dumps(self.body) if self.body is not None else None

    def upstream_body(self):
        """``(bytes or None, content type)`` to send upstream: the client's own JSON bytes, or
        the multipart form rebuilt with its fields as sent and its files byte for byte."""
        op = self.operation
        if op.is_multipart:
            fields = []
            for name, value in (self.body or {}).items():
                values = value if isinstance(value, list) else [value]
                fields.extend((name, str(v)) for v in values)
            for upload in self.files:
                fields.append((upload.field, (upload.name, upload.read(), upload.content_type)))
            data, content_type = encode_multipart_formdata(fields)
            return data, content_type
        if op.is_json or self.raw_body is not None or self.body is not None:
            return self.json_bytes(), "application/json"
        return None, None

    def payload_bytes(self):
        """What a background call needs to send later: the JSON body as sent (files are kept
        as artifacts and read back from storage)."""
        if self.operation.is_multipart:
            return orjson.dumps(self.body or {})
        return self.json_bytes() or b""

    def request_hash(self):
        digest = hashlib.sha256()
        digest.update(f"{self.operation.id}\n{self.path_kwargs!r}\n{self.query}\n".encode())
        if self.operation.is_multipart:
            digest.update(orjson.dumps(self.body or {}, option=orjson.OPT_SORT_KEYS))
            for upload in self.files:
                digest.update(f"\n{upload.field}:{upload.name}:".encode())
                digest.update(hashlib.sha256(upload.read()).digest())
        elif self.body is not None:
            digest.update(orjson.dumps(self.body, option=orjson.OPT_SORT_KEYS))
        return digest.hexdigest()


@dataclass
class Result:
    """What the caller gets back: the record and the upstream's answer."""

    call: Call
    status: int
    headers: dict
    body: bytes = b""
    stream: object = None  # a StreamRelay when the answer is an event stream

    @property
    def content_type(self):
        return self.headers.get("content-type", "application/json")

    def json(self):
        return orjson.loads(self.body) if self.body else None


def _client_headers(response, call):
    keep = set(app_settings.RECORD_RESPONSE_HEADERS) | set(PASS_HEADERS)
    headers = {k: v for k, v in response.headers.items() if k in keep}
    headers["x-call-id"] = str(call.pk)
    return headers


def send(invocation, call):
    op = invocation.operation
    body, content_type = invocation.upstream_body()
    return get_client().send(
        op.method, op.upstream_path(invocation.path_kwargs), query=invocation.query,
        headers=_forward_headers(invocation), body=body, content_type=content_type,
        stream=invocation.stream,
    )


def _forward_headers(invocation):
    allowed = app_settings.FORWARD_HEADERS
    return {k: v for k, v in invocation.headers.items() if k in allowed}


def run(invocation, call=None):
    """Perform a call now (sync or stream) and return a :class:`Result`.

    The record is written before the upstream is asked unless ``call`` (a queued record) is
    given. Gateway-side failures raise an :class:`OpenAIDjangoError` carrying ``call``.
    """
    if call is None:
        call = recorder.start(invocation)
    try:
        response = send(invocation, call)
    except OpenAIDjangoError as exc:
        recorder.fail(call, exc, started=invocation.started)
        exc.call = call
        raise
    except Exception as exc:
        recorder.fail(call, exc, started=invocation.started)
        raise
    if response.raw is not None:
        relay = StreamRelay(call, response, invocation.started)
        return Result(call, response.status, _client_headers(response, call), stream=relay)
    try:
        recorder.finish(call, response, started=invocation.started)
    except Exception as exc:
        logger.exception("Could not finish the record of call %s", call.pk)
        recorder.fail(call, exc, started=invocation.started, outcome=Call.Outcome.ERROR)
    if call.outcome == Call.Outcome.BAD_RESPONSE:
        error = UpstreamBadResponse()
        error.call = call
        raise error
    return Result(call, response.status, _client_headers(response, call), body=response.body)


class StreamRelay:
    """Relays an upstream event stream to the client chunk by chunk, keeping the events.

    Iterating yields the upstream's bytes as they arrive. The record is finished exactly once:
    at ``[DONE]``, when the upstream ends or breaks, or when the client goes away (the server
    closes the iterator, or ``close()`` is called before iteration began).
    """

    def __init__(self, call, response, started):
        self.call = call
        self.response = response
        self.started = started
        self.parser = SSEParser()
        self.finished = False
        self._generator = None

    def __iter__(self):
        self._generator = self._relay()
        return self._generator

    def _finish(self, outcome=None, exc=None):
        if self.finished:
            return
        self.finished = True
        response = self.response
        response.elapsed_ms = (time.perf_counter() - self.started) * 1000
        events = self.parser.events
        try:
            if exc is not None or outcome not in (None, Call.Outcome.OK):
                recorder.fail(self.call, exc, started=self.started, outcome=outcome,
                              response=response, events=events, stream_done=self.parser.done)
            else:
                recorder.finish(self.call, response, started=self.started, events=events,
                                stream_done=self.parser.done)
        except Exception:
            logger.exception("Could not finish the record of stream call %s", self.call.pk)

    def _relay(self):
        raw = self.response.raw
        try:
            with closing(iter_stream(raw)) as chunks:
                for chunk in chunks:
                    self.parser.feed(chunk)
                    yield chunk
        except GeneratorExit:
            self._finish(Call.Outcome.CLIENT_DISCONNECTED)
            raise
        except (http.client.HTTPException, ReadTimeoutError, ProtocolError, HTTPError,
                OSError) as exc:
            timed_out = isinstance(exc, (ReadTimeoutError, TimeoutError))
            error = (UpstreamTimeout("The upstream API stopped sending its stream.")
                     if timed_out else
                     UpstreamUnavailable(f"The upstream API broke off its stream: {exc}"))
            self._finish(Call.Outcome.TIMEOUT if timed_out else Call.Outcome.STREAM_BROKEN,
                         error)
            # Tell the client in-band: it already has a 200 and cannot get another status.
            yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
            return
        self._finish(Call.Outcome.OK if self.parser.done else Call.Outcome.STREAM_INCOMPLETE)

    def close(self):
        """Called by Django when the response is closed; finishes the record if the relay did
        not (the client went away before or during the stream)."""
        if self._generator is not None:
            self._generator.close()
        if not self.finished:
            raw = self.response.raw
            raw.close()
            raw.release_conn()
            self._finish(Call.Outcome.CLIENT_DISCONNECTED)


def invocation_from_call(call, *, overrides=None, mode=None, source=None, replay_of=None,
                         user=None, api_key=None):
    """Rebuild the invocation a recorded call made, to perform it (a queued background call)
    or to replay it (``replay_of`` set), with ``overrides`` merged into the body.

    A queued call is rebuilt from its pending payload (exactly what the client sent, never the
    redacted copy); a replay from the recorded request and its input artifacts, re-attached
    from storage.
    """
    from openai_django.models import Artifact
    from openai_django.spec import get_registry

    operation = get_registry()[call.operation]
    path_kwargs = _path_kwargs(operation, call.path)
    raw_body = None
    if call.payload is not None and replay_of is None:
        payload = bytes(call.payload)
        body = orjson.loads(payload) if payload else None
        if operation.is_json or not operation.is_multipart:
            raw_body = payload or None
    else:
        body = call.request_body
        if body is None and (operation.is_json or operation.is_multipart):
            raise ValueError(f"Call {call.pk} has no recorded request body to send again.")
    if overrides:
        body = {**(body or {}), **overrides}
        raw_body = None
    files = [
        UploadedInput(field=a.field, name=a.name, content_type=a.content_type, index=a.index,
                      file=a.file)
        for a in call.artifacts.filter(role__in=Artifact.INPUT_ROLES).order_by("field", "index")
        if a.file and not a.purged_at
    ] if operation.is_multipart else []  # only multipart calls have input files: no query
    if operation.file_fields and not files and operation.is_multipart:
        raise ValueError(f"Call {call.pk} has no stored input files to send again.")
    return Invocation(
        operation=operation, path_kwargs=path_kwargs, query=call.query, body=body,
        raw_body=raw_body, files=files,
        headers={k: v for k, v in (call.request_headers or {}).items() if k != "authorization"},
        user=user if user is not None else call.user,
        # A replay made by someone else is theirs, not made with the original caller's key.
        api_key=api_key if api_key is not None else (
            call.api_key if user is None or user.pk == call.user_id else None),
        mode=mode or call.mode, source=source or call.source,
        replay_of_id=replay_of.pk if replay_of is not None else call.replay_of_id,
        # Only a new record (a replay) needs the target object; performing a queued call
        # does not, and fetching it would cost a query per background call.
        target=call.target if call.target_type_id and replay_of is not None else None,
        # A replay is for looking at, not for the site's "your description is ready" hooks.
        callback=call.callback if replay_of is None else "",
    )


def _path_kwargs(operation, path):
    """Read the path parameters back out of a recorded upstream path."""
    import re
    from urllib.parse import unquote

    pattern = "^" + re.sub(r"\\{([^}]+)\\}", r"(?P<\1>[^/]+)", re.escape(operation.path)) + "$"
    match = re.match(pattern, path)
    return {k: unquote(v) for k, v in match.groupdict().items()} if match else {}
