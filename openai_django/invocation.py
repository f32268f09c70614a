"""What one call asks for, whoever asked: an HTTP request, Python code, or a stored call.

Three builders make an :class:`Invocation` (:func:`from_request`, :func:`from_kwargs`,
:func:`from_call`); :func:`check` is the one validate-and-limit step the first two go through
(a stored call was checked when it was first made). The gateway takes it from there.
"""

import hashlib
import io
import json
import mimetypes
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote, urlencode

import orjson
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http.multipartparser import MultiPartParserError
from urllib3.filepost import encode_multipart_formdata

from openai_django import kinds, tagging
from openai_django.conf import app_settings
from openai_django.errors import (
    InvalidRequest,
    LengthRequired,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from openai_django.models import Artifact, Call
from openai_django.validation import validate_form, validate_json, validate_query

MULTIPART_SLACK = 1024 * 1024  # room for the form fields and boundaries around the files
PASSTHROUGH = "passthrough"  # the operation id of a path neither spec describes


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

    @property
    def size(self):
        return len(self.data) if self.data is not None else self.file.size


@dataclass
class Invocation:
    """Everything needed to perform one call, whoever asked for it."""

    operation: object  # spec.Operation
    path_kwargs: dict = field(default_factory=dict)
    query: str = ""
    body: object = None  # parsed JSON body, or the form fields of a multipart body
    raw_body: bytes | None = None  # the body exactly as the client sent it (JSON, passthrough)
    raw_content_type: str = ""  # a body forwarded as sent: its own content type
    as_sent: bool = False  # the body is of another type the operation accepts: forwarded raw
    unchecked: bool = False  # a body of the operation's second type: no schema to check
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
    # The site's labels (openai_django.tagging): recorded, never sent upstream.
    tags: list = field(default_factory=list)
    metadata: dict | None = None
    session: str = ""

    @cached_property
    def kind(self):
        return kinds.of(self.operation)

    @property
    def raw(self):
        """Whether the body is forwarded as the client sent it: a path neither spec knows, or
        a body that is neither JSON nor a form (realtime's ``application/sdp``)."""
        op = self.operation
        return self.as_sent or op.id == PASSTHROUGH or bool(
            op.content_type and not op.is_json and not op.is_multipart)

    @property
    def stream(self):
        if self.mode == Call.Mode.ASYNC or not self.operation.streamable:
            return False
        if isinstance(self.body, dict) and (self.body.get("stream") in (True, "true")
                                            or self.body.get("stream_format") == "sse"):
            return True
        return "stream=true" in self.query.lower()

    def recorded_headers(self):
        return {k: v for k, v in self.headers.items() if k != "authorization"}

    def json_bytes(self):
        if self.raw_body is not None:
            return self.raw_body
        return orjson.dumps(self.body) if self.body is not None else None

    def upstream_body(self):
        """``(bytes or None, content type)`` to send upstream: the client's own bytes, or the
        multipart form rebuilt with its fields as sent and its files byte for byte."""
        op = self.operation
        if self.raw:
            return self.raw_body, self.raw_content_type or op.content_type
        if op.is_multipart:
            fields = []
            for name, value in (self.body or {}).items():
                values = value if isinstance(value, list) else [value]
                fields.extend((name, str(v)) for v in values)
            for upload in self.files:
                fields.append((upload.field, (upload.name, upload.read(), upload.content_type)))
            return encode_multipart_formdata(fields)
        if op.is_json or self.raw_body is not None or self.body is not None:
            return self.json_bytes(), "application/json"
        return None, None

    def payload_bytes(self):
        """What a background call needs to send later: the body as sent (files are kept as
        artifacts and read back from storage)."""
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
        elif self.raw_body:
            digest.update(self.raw_body)
        return digest.hexdigest()


# -- the one validate-and-limit step -------------------------------------------------------


def file_limit(invocation):
    """The per-file limit of the operation's kind, in bytes."""
    return getattr(app_settings, invocation.kind.upload_limit)


def check(invocation, query=None):
    """Size limits, then the spec's schemas: raises :class:`PayloadTooLarge` or
    :class:`InvalidRequest` (``param`` set) before anything is sent."""
    op = invocation.operation
    limit = file_limit(invocation)
    for upload in invocation.files:
        if upload.size > limit:
            raise PayloadTooLarge(
                f"The file '{upload.field}' is {upload.size} bytes; the limit for this "
                f"operation is {limit} bytes.", param=upload.field)
    if app_settings.VALIDATION == "off" or invocation.raw or invocation.unchecked:
        return
    if op.is_multipart:
        validate_form(op, invocation.body or {}, {u.field.removesuffix("[]"): u
                                                  for u in invocation.files})
    elif op.schema is not None:
        if invocation.body is None:
            raise InvalidRequest("The request body is empty: this operation takes a JSON "
                                 "object.")
        validate_json(op, invocation.body)
    if op.query_params:
        validate_query(op, query if query is not None else _query_dict(invocation.query))


def _query_dict(query):
    from django.http import QueryDict

    return QueryDict(query).dict()


# -- from an HTTP request ------------------------------------------------------------------


def _header(meta, name):
    return meta.get("HTTP_" + name.upper().replace("-", "_"))


# A forwarded header longer than this is refused: an upstream (or its proxy) that echoes it
# back could make the answer's head too large to read.
MAX_HEADER_BYTES = 4096


def from_request(request, operation, path_kwargs, *, user, api_key, started):
    """The invocation of an HTTP request, its body read and checked (raises the gateway's
    errors; the invocation they concern is ``exc.invocation``)."""
    meta = request.META
    invocation = Invocation(
        operation=operation, path_kwargs=path_kwargs, query=meta.get("QUERY_STRING", ""),
        user=user, api_key=api_key, started=started,
        idempotency_key=meta.get("HTTP_IDEMPOTENCY_KEY", "")[:255],
    )
    try:
        tagging.from_meta(invocation, meta)
    except InvalidRequest as exc:
        exc.invocation = invocation  # recorded as rejected, with none of the labels
        raise
    for name in app_settings.FORWARD_HEADERS:
        if name.startswith(tagging.HEADER_PREFIX):
            continue  # the gateway's own headers never go upstream
        value = _header(meta, name)
        if value:
            invocation.headers[name] = value
            if len(value) > MAX_HEADER_BYTES:
                exc = InvalidRequest(f"The {name} header is {len(value)} bytes long; at most "
                                     f"{MAX_HEADER_BYTES} are forwarded.", param=name)
                invocation.headers[name] = value[:64] + "…"
                exc.invocation = invocation
                raise exc
    prefer = meta.get("HTTP_PREFER", "")
    if "respond-async" in prefer.replace(" ", "").lower().split(","):
        invocation.mode = Call.Mode.ASYNC
    try:
        _read_body(request, invocation)
        # The query parsed (``request.GET``: a QueryDict) only for an operation that has
        # query parameters to check.
        check(invocation, request.GET.dict() if invocation.operation.query_params else None)
    except (InvalidRequest, LengthRequired, PayloadTooLarge, UnsupportedMediaType) as exc:
        exc.invocation = invocation
        raise
    if invocation.stream:
        invocation.mode = Call.Mode.STREAM
    return invocation


def _body_limit(invocation):
    op = invocation.operation
    if op.is_multipart:
        return file_limit(invocation) * max(1, len(op.file_fields)) + MULTIPART_SLACK
    if invocation.raw:
        return app_settings.MAX_FILE_BYTES
    return app_settings.MAX_JSON_BYTES


def _read_body(request, invocation):
    op = invocation.operation
    meta = request.META
    _dechunk(request, _body_limit(invocation))
    content_type = meta.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    try:
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidRequest("The Content-Length header is not a number.") from None
    if (content_type and content_type != op.content_type
            and content_type in op.content_types):
        # The operation accepts this type too (JSON image edits with URLs, a container file
        # uploaded as a form, a realtime call's SDP offer): served as that variant of the
        # operation, checked by the upstream (the registry holds the first type's schema).
        op = invocation.operation = replace(op, content_type=content_type, schema=None)
        invocation.as_sent = not (op.is_json or op.is_multipart)
        invocation.unchecked = True
    if invocation.raw:
        return _read_raw(request, invocation, length)
    if op.is_multipart:
        return _read_multipart(request, invocation, content_type, length)
    if length == 0 and not op.is_json:
        return
    if content_type and not (content_type == "application/json"
                             or content_type.endswith("+json")):
        raise UnsupportedMediaType(
            f"{op.method} {op.path} takes an application/json body, not {content_type}. "
            f"Send the header Content-Type: application/json.")
    if length > app_settings.MAX_JSON_BYTES:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is "
                              f"{app_settings.MAX_JSON_BYTES} bytes.")
    raw = request.read(length) if length else b""
    if not raw:
        if op.body_required:
            raise InvalidRequest("The request body is empty: this operation takes a JSON "
                                 "object.")
        return
    invocation.body = parse_json(raw)
    invocation.raw_body = raw


def parse_json(raw):
    """The parsed body; a key given twice in one object is refused (400 naming it).

    Validation reads the parsed value while the upstream gets the bytes as sent: with a key
    twice, an upstream that keeps the first value would see one validation never checked.
    orjson stays the parser (strict: no NaN, no lone surrogates); the standard library's C
    scanner with a pairs hook only looks for repeats. Measured with ``timeit`` here
    (2026-12-01): 10.3 us on a 340-byte chat body (orjson alone 1.6 us), 1.7 ms on 1 MB
    (orjson alone 0.66 ms); a hand-made scan of the bytes would have to tokenize strings and
    escapes to be right, and was not worth it at that price.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request ({exc}). The "
                             f"OpenAI API expects a JSON payload.") from None
    try:
        _unique_keys_decoder().decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except DuplicateKey as exc:
        raise InvalidRequest(f"The JSON body gives the key '{exc.key}' more than once; send "
                             f"each key once.", param=exc.key, code="duplicate_key") from None
    return body


_decoders = threading.local()


def _unique_keys_decoder():
    """This thread's ``JSONDecoder(object_pairs_hook=unique_keys)``: what ``json.loads(raw,
    object_pairs_hook=unique_keys)`` does (the bytes decoded as it decodes them), without a
    decoder and its C scanner made anew for each body (one a thread: the scanner's key memo
    is its own). With the two other cuts of from_request (validation imported once, the
    query parsed only when checked): 3.01 M -> 2.96 M instructions a recorded chat call
    (callgrind, 200 calls in one process, WRITER=0)."""
    try:
        return _decoders.decoder
    except AttributeError:
        decoder = _decoders.decoder = json.JSONDecoder(object_pairs_hook=unique_keys)
        return decoder


class DuplicateKey(ValueError):
    """A JSON object gave ``key`` twice (raised by :func:`unique_keys`)."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


def unique_keys(pairs):
    """``json.loads``'s ``object_pairs_hook`` that refuses a key given twice."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


def _dechunk(request, limit):
    """A body sent with ``Transfer-Encoding: chunked`` (no ``Content-Length``): read it whole
    when the server hands over a terminated input (gunicorn, granian and other WSGI servers
    de-chunk it; ASGI servers always do), else 411. Django itself reads no body without a
    length, which made a chunked upload look empty (a misleading 400)."""
    meta = request.META
    if "chunked" not in meta.get("HTTP_TRANSFER_ENCODING", "").lower() \
            or meta.get("CONTENT_LENGTH"):
        return
    environ = getattr(request, "environ", None)
    if "wsgi.input" in (environ or {}):
        if not environ.get("wsgi.input_terminated"):
            raise LengthRequired()
        stream = environ["wsgi.input"]
    else:
        stream = request._stream  # ASGI: the server already collected the body
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is over {limit} bytes, the limit for this "
                              f"operation.")
    request._stream = io.BytesIO(raw)
    request._read_started = False
    meta["CONTENT_LENGTH"] = str(len(raw))


def _read_multipart(request, invocation, content_type, length):
    op = invocation.operation
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(f"{op.method} {op.path} takes a multipart/form-data body, "
                                   f"not {content_type or 'no body'}.")
    limit = file_limit(invocation) * max(1, len(op.file_fields)) + MULTIPART_SLACK
    if length > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit for this "
                              f"operation is {limit} bytes.")
    try:
        post, files = request.POST, request.FILES
    except (MultiPartParserError, TooManyFieldsSent, TooManyFilesSent) as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}") from None
    invocation.body = {key: values if len(values) > 1 else values[0]
                       for key, values in post.lists()}
    for field_name, uploads in files.lists():
        for index, upload in enumerate(uploads):
            invocation.files.append(UploadedInput(
                field=field_name, name=upload.name or field_name,
                content_type=upload.content_type or "application/octet-stream",
                index=index, file=upload))


def _read_raw(request, invocation, length):
    """A path neither spec knows, or a body that is neither JSON nor a form: forwarded byte
    for byte, and recorded when it is JSON."""
    if length > app_settings.MAX_FILE_BYTES:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is "
                              f"{app_settings.MAX_FILE_BYTES} bytes.")
    raw = request.read(length) if length else b""
    invocation.raw_body = raw or None
    invocation.raw_content_type = request.META.get("CONTENT_TYPE", "")
    if raw and "json" in invocation.raw_content_type:
        try:
            invocation.body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            invocation.body = None


def passthrough_operation(method, path):
    """A stand-in operation for ``method path``, a path neither bundled spec describes."""
    from openai_django.spec import Operation

    return Operation(id=PASSTHROUGH, method=method, path=path, name="Not in the specs",
                     streamable=True)


# -- from Python arguments -----------------------------------------------------------------


def _operation(operation_id):
    from openai_django.spec import get_registry

    try:
        return get_registry()[operation_id]
    except KeyError:
        raise InvalidRequest(
            f"Unknown operation {operation_id!r}: use an operationId of the spec, e.g. "
            f"'createChatCompletion'.", param="operation") from None


def _resolve_key(user, api_key):
    from openai_django.errors import AuthenticationFailed
    from openai_django.models import APIKey, hash_key

    if isinstance(api_key, str):
        found = APIKey.objects.active().filter(hashed_key=hash_key(api_key)).first()
        if found is None:
            raise AuthenticationFailed()
        api_key = found
    if user is not None and not getattr(user, "is_authenticated", True):
        user = None  # AnonymousUser: a call with no user
    if user is None and api_key is not None:
        user = api_key.user
    return user, api_key


def _read_file(field, value, index=0):
    """One file of a multipart call as an :class:`UploadedInput`."""
    if isinstance(value, tuple):
        if len(value) == 2:
            name, data = value
            content_type = None
        elif len(value) == 3:
            name, data, content_type = value
        else:
            raise InvalidRequest(f"'{field}' must be (name, bytes) or (name, bytes, "
                                 f"content_type).", param=field)
        if hasattr(data, "read"):
            data = data.read()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        name, data, content_type = field, bytes(value), None
    elif isinstance(value, (str, Path)):
        path = Path(value)
        name, data, content_type = path.name, path.read_bytes(), None
    elif hasattr(value, "read"):
        name = os.path.basename(str(getattr(value, "name", "") or field))
        data = value.read()
        content_type = getattr(value, "content_type", None)
    else:
        raise InvalidRequest(f"'{field}' must be a file, bytes, a path or a (name, bytes, "
                             f"content_type) tuple, not {type(value).__name__}.", param=field)
    if isinstance(data, str):
        data = data.encode()
    content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return UploadedInput(field=field, name=name, content_type=content_type, index=index,
                         data=bytes(data))


def _form_value(value):
    """A form field as the HTTP path would receive it: text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
            isinstance(v, (str, int, float)) for v in value)):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return [_form_value(v) for v in value]
    return str(value)


def _query_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def from_kwargs(operation, *, user=None, api_key=None, target=None, callback=None, files=None,
                headers=None, query=None, idempotency_key=None, mode=Call.Mode.SYNC,
                call_tags=None, call_metadata=None, call_session=None, **params):
    """An invocation from Python arguments, checked exactly like a request over HTTP; raises
    :class:`InvalidRequest` (``param`` set) or :class:`PayloadTooLarge` before anything is
    recorded. ``call_tags``, ``call_metadata`` and ``call_session`` label the call like the
    ``OpenAI-Django-*`` headers (see :mod:`openai_django.tagging`)."""
    op = _operation(operation)
    user, api_key = _resolve_key(user, api_key)
    path_kwargs = {}
    for name in op.path_params:
        if name not in params:
            raise InvalidRequest(f"Missing required path parameter: '{name}'.", param=name)
        path_kwargs[name] = str(params.pop(name))
    for name in op.file_fields:
        if name in params:
            files = {**(files or {}), name: params.pop(name)}
    uploads = []
    for name, value in (files or {}).items():
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            uploads.append(_read_file(name, item, index))
    query_items = dict(query or {}) if not isinstance(query, str) else {}
    body = raw_body = None
    if op.is_multipart:
        body = {name: _form_value(value) for name, value in params.items()}
    elif op.is_json or (op.schema is not None and params):
        if uploads:
            raise InvalidRequest(f"{operation} takes no files.", param=next(iter(files)))
        body = params
        try:
            raw_body = orjson.dumps(body)
        except TypeError as exc:
            raise InvalidRequest(f"The parameters cannot be sent as JSON: {exc}") from None
        if len(raw_body) > app_settings.MAX_JSON_BYTES:
            raise PayloadTooLarge(f"The request body is {len(raw_body)} bytes; the limit is "
                                  f"{app_settings.MAX_JSON_BYTES} bytes.")
    else:
        if uploads:
            raise InvalidRequest(f"{operation} takes no files.", param=next(iter(files)))
        for name, value in params.items():
            if name not in op.query_params:
                raise InvalidRequest(f"Unknown parameter {name!r} for {operation}: it takes "
                                     f"no body.", param=name)
            query_items[name] = value
    query_string = query if isinstance(query, str) else urlencode(
        {k: _query_value(v) for k, v in query_items.items()})
    invocation = Invocation(
        operation=op, path_kwargs=path_kwargs, query=query_string, body=body,
        raw_body=raw_body, files=uploads,
        headers={k.lower(): v for k, v in tagging.forwardable(headers or {}).items()
                 if k.lower() != "authorization"},
        user=user, api_key=api_key, mode=mode, source=Call.Source.PYTHON,
        idempotency_key=(idempotency_key or "")[:255], target=target,
        callback=str(getattr(callback, "name", callback) or ""),
    )
    tagging.from_keywords(invocation, call_tags, call_metadata, call_session, headers)
    check(invocation, {k: _query_value(v) for k, v in query_items.items()}
          if not isinstance(query, str) else None)
    if invocation.stream:
        invocation.mode = Call.Mode.STREAM
    return invocation


# -- from a stored call --------------------------------------------------------------------


def path_kwargs_of(operation, path):
    """Read the path parameters back out of a recorded upstream path."""
    pattern = "^" + re.sub(r"\\{([^}]+)\\}", r"(?P<\1>[^/]+)", re.escape(operation.path)) + "$"
    match = re.match(pattern, path)
    return {k: unquote(v) for k, v in match.groupdict().items()} if match else {}


def from_call(call, *, overrides=None, mode=None, source=None, replay_of=None, user=None,
              api_key=None):
    """The invocation a recorded call made, to perform it (a queued background call) or to
    replay it (``replay_of`` set), with ``overrides`` merged into the body.

    A queued call is rebuilt from its pending payload (exactly what the client sent, never the
    redacted copy); a replay from the recorded request and its input artifacts, re-attached
    from storage.
    """
    operation = call.operation_spec
    if operation is None:
        if call.operation != PASSTHROUGH:
            raise ValueError(f"Call {call.pk} is of an operation this version does not know: "
                             f"{call.operation!r}.")
        operation = passthrough_operation(call.method, call.path)
    raw_body = None
    if call.payload is not None and replay_of is None:
        payload = bytes(call.payload)
        body = orjson.loads(payload) if payload and not operation.id == PASSTHROUGH else None
        if not operation.is_multipart:
            raw_body = payload or None
    else:
        body = call.request_body
        if body is None and (operation.is_json or operation.is_multipart):
            raise ValueError(f"Call {call.pk} has no recorded request body to send again.")
        if operation.id == PASSTHROUGH and body is not None:
            raw_body = orjson.dumps(body)
    if overrides:
        body = {**(body or {}), **overrides}
        raw_body = orjson.dumps(body) if operation.id == PASSTHROUGH else None
    files = [
        UploadedInput(field=a.field, name=a.name, content_type=a.content_type, index=a.index,
                      file=a.file)
        for a in call.artifacts.filter(role__in=Artifact.INPUT_ROLES).order_by("field", "index")
        if a.file and not a.purged_at
    ] if operation.is_multipart else []  # only multipart calls have input files: no query
    if operation.file_fields and not files and operation.is_multipart:
        raise ValueError(f"Call {call.pk} has no stored input files to send again.")
    headers = {k: v for k, v in tagging.forwardable(call.request_headers or {}).items()
               if k != "authorization"}
    return Invocation(
        operation=operation, path_kwargs=path_kwargs_of(operation, call.path),
        query=call.query, body=body, raw_body=raw_body,
        # What a passthrough call keeps of its body is the JSON it recorded.
        raw_content_type="application/json" if raw_body and operation.id == PASSTHROUGH
        else "", files=files, headers=headers,
        user=user if user is not None else call.user,
        # A replay made by someone else is theirs, not made with the original caller's key.
        api_key=api_key if api_key is not None else (
            call.api_key if user is None or user.pk == call.user_id else None),
        mode=mode or call.mode, source=source or call.source,
        replay_of_id=replay_of.pk if replay_of is not None else call.replay_of_id,
        # Only a new record (a replay) needs the target object; performing a queued call does
        # not, and fetching it would cost a query per background call.
        target=call.target if call.target_type_id and replay_of is not None else None,
        # A replay is for looking at, not for the site's "your description is ready" hooks.
        callback=call.callback if replay_of is None else "",
        # A replay keeps the original's tags and metadata (its spend counts where the
        # original's did), not its session: it is not a turn of that conversation.
        tags=list(call.tags or ()), metadata=call.metadata,
        session=call.session if replay_of is None else "",
    )


__all__ = ["Invocation", "UploadedInput", "check", "from_call", "from_kwargs", "from_request",
           "passthrough_operation", "path_kwargs_of"]
