"""The DRF surface: one view class serves every operation of the spec, plus the REST log."""

import logging
import time
import uuid

import orjson
from django.db import IntegrityError
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from rest_framework import exceptions as drf_exceptions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from openai_django import gateway, recorder
from openai_django.auth import APIKeyAuthentication, authenticate_key
from openai_django.conf import app_settings
from openai_django.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    OpenAIDjangoError,
    PayloadTooLarge,
    PermissionDenied,
    Throttled,
    Unprocessable,
    UnsupportedMediaType,
    error_body,
    error_response,
)
from openai_django.models import Artifact, Call
from openai_django.serializers import call_to_dict
from openai_django.spec import spec_bytes
from openai_django.validation import validate_form, validate_json, validate_query

logger = logging.getLogger("openai_django.views")

AUDIO_FIELDS = {"createTranscription", "createTranslation"}
MULTIPART_SLACK = 1024 * 1024  # room for the form fields and boundaries around the files


class FirstRenderer(BaseContentNegotiation):
    """Never 406: the gateway answers JSON or an event stream whatever ``Accept`` says."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def json_response(data, status=200, headers=None):
    response = HttpResponse(orjson.dumps(data), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response[key] = value
    return response


class GatewayAPIView(APIView):
    """Key auth and OpenAI-style errors for every endpoint of the gateway."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRenderer
    throttle_classes = []

    def handle_exception(self, exc):
        if isinstance(exc, OpenAIDjangoError):
            response = exc.response()
            call = getattr(exc, "call", None)
            if call is not None:
                response["X-Call-Id"] = str(call.pk)
            if isinstance(exc, AuthenticationFailed):
                response["WWW-Authenticate"] = 'Bearer realm="api"'
            return response
        if isinstance(exc, drf_exceptions.NotAuthenticated):
            return AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None, headers={"WWW-Authenticate": 'Bearer realm="api"'},
            ).response()
        if isinstance(exc, drf_exceptions.MethodNotAllowed):
            return MethodNotAllowed(str(exc.detail)).response()
        if isinstance(exc, drf_exceptions.PermissionDenied):
            return PermissionDenied(str(exc.detail)).response()
        if isinstance(exc, drf_exceptions.Throttled):
            return Throttled(str(exc.detail)).response()
        if isinstance(exc, drf_exceptions.APIException):
            return error_response(error_body(str(exc.detail), code=exc.default_code),
                                  exc.status_code)
        logger.exception("Unhandled error in %s", type(self).__name__)
        return error_response(
            error_body("The gateway had an error while processing your request.",
                       type="server_error", code="internal_error"), 500)

    def http_method_not_allowed(self, request, *args, **kwargs):
        raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")


def _forwarded_headers(meta):
    headers = {}
    for name in app_settings.FORWARD_HEADERS:
        value = meta.get("HTTP_" + name.upper().replace("-", "_"))
        if value:
            headers[name] = value
    return headers


class _KeyedRequest:
    """What :meth:`OperationView.perform` reads of a request: the key's user and the key."""

    __slots__ = ("_request", "auth", "method", "user")

    def __init__(self, request, key):
        self._request = request
        self.method = request.method
        self.auth = key
        self.user = key.user


class OperationView(GatewayAPIView):
    """Serves the operations of one spec path, by method (``operations = {"GET": op, ...}``)."""

    operations = {}

    def dispatch(self, request, *args, **kwargs):
        """The hot path: key auth, then :meth:`perform`, without DRF's request wrapping,
        content negotiation, permission and throttle passes and response finalising.

        Those cost about 0.15 ms a call and decide nothing here: the key is the only
        authentication, an accepted key is the only permission, and every answer is a plain
        ``HttpResponse`` built by the gateway. Methods the path does not serve (OPTIONS, a
        405) still go through DRF.
        """
        if request.method not in self.operations:
            return super().dispatch(request, *args, **kwargs)
        self.args, self.kwargs, self.request = args, kwargs, request
        self.headers = {}
        self._started = time.perf_counter()
        try:
            key = authenticate_key(request.META.get("HTTP_AUTHORIZATION", ""))
            return self.perform(_KeyedRequest(request, key), kwargs)
        except Exception as exc:
            return self.handle_exception(exc)

    def get(self, request, **kwargs):
        return self.perform(request, kwargs)

    post = delete = get

    def initial(self, request, *args, **kwargs):
        self._started = time.perf_counter()
        super().initial(request, *args, **kwargs)

    def perform(self, request, path_kwargs):
        op = self.operations.get(request.method)
        if op is None:
            return self.http_method_not_allowed(request)
        django_request = request._request
        meta = django_request.META
        invocation = gateway.Invocation(
            operation=op, path_kwargs=path_kwargs, query=meta.get("QUERY_STRING", ""),
            headers=_forwarded_headers(meta), user=request.user, api_key=request.auth,
            started=getattr(self, "_started", time.perf_counter()),
            idempotency_key=meta.get("HTTP_IDEMPOTENCY_KEY", "")[:255],
        )
        prefer = meta.get("HTTP_PREFER", "")
        if "respond-async" in prefer.replace(" ", "").lower().split(","):
            invocation.mode = Call.Mode.ASYNC
        try:
            self.read_body(django_request, op, invocation)
            if app_settings.VALIDATION != "off":
                self.validate(op, invocation, django_request)
        except (InvalidRequest, PayloadTooLarge, UnsupportedMediaType) as exc:
            exc.call = recorder.reject(invocation, exc)
            raise
        if invocation.idempotency_key and op.method == "POST":
            existing = self.idempotent_replay(invocation)
            if existing is not None:
                return existing
        if invocation.stream:  # never for a background call
            invocation.mode = Call.Mode.STREAM
        try:
            if invocation.mode == Call.Mode.ASYNC:
                return self.submit(invocation)
            result = gateway.run(invocation)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won the insert.
            return self.idempotent_replay(invocation) or Conflict(
                "A request with this Idempotency-Key is already in progress."
            ).response()
        return self.to_response(result)

    # -- request body --------------------------------------------------------------------

    def read_body(self, django_request, op, invocation):
        meta = django_request.META
        content_type = meta.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise InvalidRequest("The Content-Length header is not a number.") from None
        if op.is_multipart:
            if content_type != "multipart/form-data":
                raise UnsupportedMediaType(
                    f"{op.method} {op.path} takes a multipart/form-data body, not "
                    f"{content_type or 'no body'}."
                )
            limit = self.multipart_limit(op)
            if length > limit:
                raise PayloadTooLarge(
                    f"The request body is {length} bytes; the limit for this operation is "
                    f"{limit} bytes."
                )
            try:
                post, files = django_request.POST, django_request.FILES
            except MultiPartParserError as exc:
                raise InvalidRequest(f"The multipart body could not be read: {exc}") from None
            invocation.body = {
                key: values if len(values) > 1 else values[0] for key, values in post.lists()
            }
            for field_name, uploads in files.lists():
                for index, upload in enumerate(uploads):
                    self.check_file_size(op, field_name, upload)
                    invocation.files.append(gateway.UploadedInput(
                        field=field_name, name=upload.name or field_name,
                        content_type=upload.content_type or "application/octet-stream",
                        index=index, file=upload,
                    ))
            return
        if length == 0 and not op.is_json:
            return
        if op.is_json or length:
            if content_type and not (content_type == "application/json"
                                     or content_type.endswith("+json")):
                raise UnsupportedMediaType(
                    f"{op.method} {op.path} takes an application/json body, not "
                    f"{content_type}. Send the header Content-Type: application/json."
                )
            if length > app_settings.MAX_JSON_BYTES:
                raise PayloadTooLarge(
                    f"The request body is {length} bytes; the limit is "
                    f"{app_settings.MAX_JSON_BYTES} bytes."
                )
            raw = django_request.read(length) if length else b""
            if not raw:
                if op.body_required:
                    raise InvalidRequest(
                        "The request body is empty: this operation takes a JSON object."
                    )
                return
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"We could not parse the JSON body of your request ({exc}). The OpenAI "
                    f"API expects a JSON payload."
                ) from None
            invocation.body = body
            invocation.raw_body = raw

    def multipart_limit(self, op):
        if op.id in AUDIO_FIELDS:
            per_file = app_settings.MAX_AUDIO_BYTES
        elif op.id == "createFile":
            per_file = app_settings.MAX_FILE_BYTES
        else:
            per_file = app_settings.MAX_IMAGE_BYTES
        return per_file * max(1, len(op.file_fields)) + MULTIPART_SLACK

    def check_file_size(self, op, field_name, upload):
        if op.id in AUDIO_FIELDS:
            limit, what = app_settings.MAX_AUDIO_BYTES, "audio file"
        elif op.id == "createFile":
            limit, what = app_settings.MAX_FILE_BYTES, "file"
        else:
            limit, what = app_settings.MAX_IMAGE_BYTES, "image"
        if upload.size > limit:
            raise PayloadTooLarge(
                f"The {what} '{field_name}' is {upload.size} bytes; the limit is {limit} bytes.",
                param=field_name,
            )

    def validate(self, op, invocation, django_request):
        if op.is_multipart:
            files = {upload.field: upload for upload in invocation.files}
            validate_form(op, invocation.body or {}, files)
        elif op.schema is not None:
            if invocation.body is None:
                raise InvalidRequest("The request body is empty: this operation takes a "
                                     "JSON object.")
            validate_json(op, invocation.body)
        if op.query_params:
            validate_query(op, django_request.GET.dict())

    # -- answers -------------------------------------------------------------------------

    def to_response(self, result):
        headers = dict(result.headers)
        content_type = headers.pop("content-type", "application/json")
        if result.stream is not None:
            response = StreamingHttpResponse(result.stream, status=result.status,
                                             content_type=content_type)
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        else:
            response = HttpResponse(result.body, status=result.status,
                                    content_type=content_type)
        for key, value in headers.items():
            response[key] = value
        return response

    def submit(self, invocation):
        from openai_django import tasks

        call = tasks.submit_invocation(invocation)
        return queued_response(call)

    def idempotent_replay(self, invocation):
        """The answer for a repeated Idempotency-Key, or ``None`` if the key is new."""
        existing = (Call.objects.filter(user=invocation.user,
                                        idempotency_key=invocation.idempotency_key)
                    .only("id", "status", "request_hash", "mode", "response_status",
                          "response_body", "response_text", "response_content_type",
                          "response_headers", "stream_events", "error", "created")
                    .first())
        if existing is None:
            return None
        if existing.request_hash != invocation.request_hash():
            raise Unprocessable(
                "This Idempotency-Key was already used with a different request.",
                param="Idempotency-Key",
            )
        if existing.mode == Call.Mode.ASYNC or not existing.is_finished:
            if existing.mode == Call.Mode.ASYNC:
                return queued_response(existing)
            error = Conflict("A request with this Idempotency-Key is still in progress.",
                             code="idempotency_in_progress")
            error.call = existing
            raise error
        response = recorded_response(existing)
        response["Idempotent-Replayed"] = "true"
        return response


def queued_response(call):
    from django.urls import reverse

    location = reverse("openai_django:call-detail", args=[call.pk])
    return json_response(
        {"id": str(call.pk), "object": "call", "status": call.status},
        status=202, headers={"Location": location, "X-Call-Id": str(call.pk)},
    )


def recorded_response(call):
    """The upstream's answer as it was returned, from the record."""
    artifact = (call.artifacts.filter(role__in=[Artifact.Role.RESPONSE,
                                                Artifact.Role.FILE_CONTENT])
                .exclude(file="").filter(purged_at__isnull=True).first())
    status = call.response_status or 200
    content_type = call.response_content_type or "application/json"
    headers = {"X-Call-Id": str(call.pk)}
    if artifact is not None:
        from openai_django.storage import open_artifact  # streams from S3, not via memory

        response = FileResponse(open_artifact(artifact), status=status,
                                content_type=content_type)
    elif call.response_body is not None:
        response = HttpResponse(orjson.dumps(call.response_body), status=status,
                                content_type=content_type)
    elif call.response_text:
        response = HttpResponse(call.response_text, status=status, content_type=content_type)
    elif call.stream_events is not None:
        events = b"".join(b"data: " + e.encode() + b"\n\n" for e in call.stream_events)
        if call.outcome == Call.Outcome.OK:
            events += b"data: [DONE]\n\n"
        response = HttpResponse(events, status=status, content_type="text/event-stream")
    elif call.error is not None:
        response = json_response({"error": call.error}, status=status)
    elif call.body_purged_at or call.metadata_only:
        raise NotFound("The response body of this call is not kept (metadata only or purged).",
                       code="body_not_kept")
    else:
        response = HttpResponse(b"", status=status, content_type=content_type)
    for key, value in headers.items():
        response[key] = value
    return response


# -- the REST log ------------------------------------------------------------------------


def _get_call(request, call_id):
    try:
        uuid.UUID(str(call_id))
    except ValueError:
        raise NotFound(f"No call with id '{call_id}'.") from None
    call = Call.objects.filter(pk=call_id, user=request.user).first()
    if call is None:
        raise NotFound(f"No call with id '{call_id}'.")
    return call


class CallListView(GatewayAPIView):
    """``GET /v1/calls``: the key's user's calls, newest first, paged with ``after``."""

    def get(self, request):
        params = request._request.GET
        try:
            limit = int(params.get("limit", 20))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit") from None
        if not 1 <= limit <= app_settings.LOG_PAGE_MAX:
            raise InvalidRequest(f"'limit' must be between 1 and {app_settings.LOG_PAGE_MAX}.",
                                 param="limit")
        calls = Call.objects.filter(user=request.user).order_by("-id")
        after = params.get("after")
        if after:
            try:
                calls = calls.filter(id__lt=uuid.UUID(after))
            except ValueError:
                raise InvalidRequest("'after' must be a call id.", param="after") from None
        for name in ("operation", "status", "model"):
            if params.get(name):
                calls = calls.filter(**{name: params[name]})
        page = list(calls.defer("request_body", "response_body", "stream_events", "payload",
                                "response_text", "output_text")[: limit + 1])
        has_more = len(page) > limit
        page = page[:limit]
        data = [call_to_dict(call, request, full=False) for call in page]
        return json_response({
            "object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        })


class CallDetailView(GatewayAPIView):
    def get(self, request, call_id):
        call = _get_call(request, call_id)
        return json_response(call_to_dict(call, request), headers={"X-Call-Id": str(call.pk)})


class CallResponseView(GatewayAPIView):
    def get(self, request, call_id):
        call = _get_call(request, call_id)
        if not call.is_finished:
            error = Conflict(f"Call {call.pk} is {call.status}: it has no response yet.",
                             code="call_not_finished")
            error.call = call
            raise error
        return recorded_response(call)


class CallCancelView(GatewayAPIView):
    def post(self, request, call_id):
        call = _get_call(request, call_id)
        from openai_django import tasks

        if not tasks.cancel(call):
            error = Conflict(f"Call {call.pk} is {call.status}: only a queued call can be "
                             f"cancelled.", code="call_not_cancellable")
            error.call = call
            raise error
        call.refresh_from_db()
        return json_response(call_to_dict(call, request), headers={"X-Call-Id": str(call.pk)})


class ArtifactContentView(GatewayAPIView):
    def get(self, request, call_id, artifact_id):
        call = _get_call(request, call_id)
        artifact = call.artifacts.filter(pk=artifact_id).first()
        if artifact is None or not artifact.file or artifact.purged_at:
            raise NotFound(f"No stored artifact '{artifact_id}' in call {call.pk}.")
        from openai_django.storage import artifact_response

        response = artifact_response(artifact)
        response["X-Call-Id"] = str(call.pk)
        return response


class SpecView(APIView):
    """The bundled spec, public like the API's own documentation."""

    authentication_classes = []
    permission_classes = []

    def get(self, request):
        return HttpResponse(spec_bytes(), content_type="application/yaml; charset=utf-8")


class UnknownPathView(GatewayAPIView):
    authentication_classes = []
    permission_classes = []

    def dispatch(self, request, *args, **kwargs):
        return NotFound(f"Invalid URL ({request.method} {request.path})",
                        code="unknown_url").response()
