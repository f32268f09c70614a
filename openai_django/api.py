"""The Python API for code inside the host site: ``openai_django.create`` and ``submit``.

Both take an operation of the spec by its ``operationId`` and its parameters as keywords, and
go through the same recording path as the HTTP endpoints (validated against the spec like them,
recorded before the upstream is asked)::

    import openai_django

    result = openai_django.create(
        "createChatCompletion", model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Describe a teapot"}],
        user=request.user, target=product,
    )
    result.data["choices"][0]["message"]["content"]   # or: data, call = result
    result.call                                       # the Call record

    call = openai_django.submit("createImage", prompt="A teapot", user=request.user,
                                target=product, callback="shop.tasks.image_ready")
    call.status                                       # "queued"; a worker performs it

Keywords that name a path parameter (``file_id=``, ``model=`` of ``retrieveModel``...) fill
the path; the rest is the JSON body, the multipart form fields, or the query string of a GET.
Files for multipart operations come as ``files={"image": ...}`` or as the field's own keyword,
each a file object, ``bytes``, a ``pathlib.Path`` or a ``(name, bytes, content_type)`` tuple.
"""

import logging
import mimetypes
import os
import time
from pathlib import Path
from urllib.parse import urlencode

import orjson

from openai_django import gateway
from openai_django.conf import app_settings
from openai_django.errors import (
    AuthenticationFailed,
    InvalidRequest,
    PayloadTooLarge,
    Unprocessable,
    UpstreamStatusError,
)
from openai_django.models import Call
from openai_django.upstream import SSEParser

logger = logging.getLogger("openai_django.api")

__all__ = ["Response", "StreamResponse", "build_invocation", "create", "submit"]


class Response:
    """The answer of :func:`create`: the upstream's body and the record of the call.

    ``data`` is the parsed JSON (``None`` for a non-JSON body such as a ``text`` transcript or
    a file's content: see ``content`` and ``text``). Unpacks as ``data, call = response``.
    """

    def __init__(self, result):
        self.call = result.call
        self.status = result.status
        self.headers = result.headers
        self.content = result.body
        self.content_type = result.content_type
        self.data = None
        if "json" in self.content_type and self.content:
            self.data = orjson.loads(self.content)

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return self.data

    def __iter__(self):
        return iter((self.data, self.call))

    def __repr__(self):
        return f"<openai_django.Response {self.status} call={self.call.pk}>"


class StreamResponse:
    """The answer of :func:`create` with ``stream=True``: iterate it for the parsed chunks as
    the upstream sends them. The record is finished when the stream ends, or when ``close()``
    is called (use it as a context manager to never leave a stream open)."""

    def __init__(self, result):
        self.call = result.call
        self.status = result.status
        self.headers = result.headers
        self._relay = result.stream
        self._parser = SSEParser()

    def __iter__(self):
        seen = 0
        for chunk in self._relay:
            self._parser.feed(chunk)
            events = self._parser.events
            while seen < len(events):
                yield orjson.loads(events[seen])
                seen += 1

    def close(self):
        self._relay.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _operation(operation_id):
    from openai_django.spec import get_registry

    registry = get_registry()
    try:
        return registry[operation_id]
    except KeyError:
        raise InvalidRequest(
            f"Unknown operation {operation_id!r}: use an operationId of the spec, e.g. "
            f"'createChatCompletion'.", param="operation",
        ) from None


def _resolve_key(user, api_key):
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
    """One file of a multipart call as an :class:`~openai_django.gateway.UploadedInput`."""
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
    return gateway.UploadedInput(field=field, name=name, content_type=content_type,
                                 index=index, data=bytes(data))


def _file_limit(operation):
    if operation.id in ("createTranscription", "createTranslation"):
        return app_settings.MAX_AUDIO_BYTES, "audio file"
    if operation.id == "createFile":
        return app_settings.MAX_FILE_BYTES, "file"
    return app_settings.MAX_IMAGE_BYTES, "image"


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


def build_invocation(operation, *, user=None, api_key=None, target=None, callback=None,
                     files=None, headers=None, query=None, idempotency_key=None,
                     mode=Call.Mode.SYNC, **params):
    """An :class:`~openai_django.gateway.Invocation` from Python arguments, validated against
    the spec exactly like a request over HTTP; raises :class:`InvalidRequest` (``param`` set)
    or :class:`PayloadTooLarge` before anything is recorded."""
    op = _operation(operation)
    user, api_key = _resolve_key(user, api_key)
    path_kwargs = {}
    for name in op.path_params:
        if name not in params:
            raise InvalidRequest(f"Missing required path parameter: '{name}'.", param=name)
        path_kwargs[name] = str(params.pop(name))
    uploads = []
    for field in op.file_fields:
        if field in params:
            files = {**(files or {}), field: params.pop(field)}
    for field, value in (files or {}).items():
        values = value if isinstance(value, list) else [value]
        for index, item in enumerate(values):
            uploads.append(_read_file(field, item, index))
    query_items = dict(query or {}) if not isinstance(query, str) else {}
    body = None
    raw_body = None
    if op.is_multipart:
        body = {name: _form_value(value) for name, value in params.items()}
        limit, what = _file_limit(op)
        for upload in uploads:
            if len(upload.data) > limit:
                raise PayloadTooLarge(
                    f"The {what} '{upload.field}' is {len(upload.data)} bytes; the limit is "
                    f"{limit} bytes.", param=upload.field)
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
    if app_settings.VALIDATION != "off":
        from openai_django.validation import validate_form, validate_json, validate_query

        if op.is_multipart:
            validate_form(op, body, {upload.field: upload for upload in uploads})
        elif op.schema is not None:
            validate_json(op, body if body is not None else {})
        if op.query_params:
            validate_query(op, {k: _query_value(v) for k, v in query_items.items()})
    query_string = query if isinstance(query, str) else urlencode(
        {k: _query_value(v) for k, v in query_items.items()})
    callback_name = getattr(callback, "name", callback) or ""
    return gateway.Invocation(
        operation=op, path_kwargs=path_kwargs, query=query_string, body=body,
        raw_body=raw_body, files=uploads,
        headers={k.lower(): v for k, v in (headers or {}).items() if k.lower() != "authorization"},
        user=user, api_key=api_key, mode=mode, source=Call.Source.PYTHON,
        idempotency_key=(idempotency_key or "")[:255], target=target,
        callback=str(callback_name), started=time.perf_counter(),
    )


def _existing(invocation):
    """The call already made with this Idempotency-Key (same request), or ``None``; a
    different request under the same key is a :class:`Unprocessable` (422)."""
    if not invocation.idempotency_key:
        return None
    existing = Call.objects.filter(user=invocation.user,
                                   idempotency_key=invocation.idempotency_key).first()
    if existing is not None and existing.request_hash != invocation.request_hash():
        raise Unprocessable("This Idempotency-Key was already used with a different request.",
                            param="idempotency_key")
    return existing


def create(operation, /, **kwargs):
    """Perform a call now and return a :class:`Response` (``data``, ``content``, ``call``),
    or a :class:`StreamResponse` when the body asks to ``stream``.

    Keywords: the operation's parameters, plus ``user``, ``api_key`` (an ``APIKey`` or a raw
    key the site issued), ``target`` (any model instance the call is about), ``callback``
    (a task, or its dotted name, sent the call id when the call ends), ``files``,
    ``headers``, ``query`` and ``idempotency_key``.

    Raises :class:`~openai_django.errors.UpstreamStatusError` when the upstream answers an
    error status, and the gateway's OpenAI-style errors when it cannot be reached; each
    carries the recorded call as ``.call``.
    """
    invocation = build_invocation(operation, **kwargs)
    if invocation.stream:
        invocation.mode = Call.Mode.STREAM
    existing = _existing(invocation)
    if existing is not None:
        return _replayed(existing)
    result = gateway.run(invocation)
    if result.stream is not None:
        return StreamResponse(result)
    if not 200 <= result.status < 300:
        raise UpstreamStatusError.from_response(result.status, result.body, call=result.call)
    return Response(result)


def _replayed(call):
    """The recorded answer of an earlier call with the same Idempotency-Key."""
    if not call.is_finished:
        from openai_django.errors import Conflict

        error = Conflict("A request with this Idempotency-Key is still in progress.",
                         code="idempotency_in_progress")
        error.call = call
        raise error
    if call.response_body is not None:
        content = orjson.dumps(call.response_body)
    else:
        content = (call.response_text or "").encode()
    result = gateway.Result(call, call.response_status or 200,
                            {"content-type": call.response_content_type or "application/json",
                             "x-call-id": str(call.pk)}, body=content)
    if not 200 <= result.status < 300:
        raise UpstreamStatusError.from_response(result.status, content, call=call)
    return Response(result)


def submit(operation, /, **kwargs):
    """Record a call as ``queued`` and have a Celery worker perform it; returns the
    :class:`~openai_django.models.Call` at once. Same keywords as :func:`create`.

    Inside a transaction the task is sent when it commits. Follow the call with
    ``call.refresh_from_db()``, ``Call.objects.for_object(target)``, the ``call_finished`` /
    ``call_failed`` signals (sent by the worker) or the ``callback`` task.
    """
    from openai_django import tasks

    invocation = build_invocation(operation, mode=Call.Mode.ASYNC, **kwargs)
    existing = _existing(invocation)
    if existing is not None:
        return existing
    return tasks.submit_invocation(invocation)

