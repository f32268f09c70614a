"""Thin adapters from HTTP to the gateway: one view serves every operation of both specs (and,
with ``PASSTHROUGH``, every other path under /v1/), plus the REST log of calls.

The operation view is a plain Django view: key auth, the invocation built from the request,
the gateway, the answer. It does not imitate DRF's ``Request``; DRF serves the REST log (its
authentication, negotiation and the same exception handler), where its work is worth it.
"""

import logging
import time
import uuid
from itertools import chain

import orjson
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from openai_django import access, fairness, gateway, invocation, recorder, tagging_views
from openai_django.auth import APIKeyAuthentication, authenticate_key, is_site_key
from openai_django.conf import app_settings
from openai_django.errors import (
    Conflict,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    OpenAIDjangoError,
    PermissionDenied,
    exception_handler,
)
from openai_django.models import Call
from openai_django.serializers import call_to_dict
from openai_django.spec import get_registry, spec_bytes
from openai_django.storage import DOWNLOAD_CSP

logger = logging.getLogger("openai_django.views")


def json_response(data, status=200, headers=None):
    response = HttpResponse(orjson.dumps(data), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response[key] = value
    return response


class OperationView(View):
    """Serves the operations of one spec path, by method (``operations = {"GET": op, ...}``)."""

    operations = {}

    @classmethod
    def as_view(cls, **initkwargs):
        # Bearer keys carry no cookies: no CSRF to check (for every subclass's dispatch, sync
        # or async). A session accepted by AUTHENTICATION_CLASSES has its CSRF checked there,
        # as DRF's SessionAuthentication checks it.
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request, *args, **kwargs):
        started = time.perf_counter()
        with fairness.entered():  # request threads served in arrival order (fairness.py)
            try:
                return to_response(gateway.run(self.invocation(request, kwargs, started)))
            except Exception as exc:
                return exception_handler(exc)

    def invocation(self, request, path_kwargs, started):
        """Who calls (an issued key; or the ``AUTHENTICATION_CLASSES``), the operation and
        the body read and checked, then the site's throttles (``THROTTLE_CLASSES``)."""
        classes = access.authentication_classes()
        header = request.META.get("HTTP_AUTHORIZATION", "")
        # The site's keys only, or one of its keys where keys are tried first (DRF would ask
        # APIKeyAuthentication, which decides): no DRF on the way.
        if classes is None or (classes[0] is APIKeyAuthentication and is_site_key(header)):
            key = authenticate_key(header)
            user, drf_request = key.user, None
        else:
            user, key, drf_request = access.authenticate(request, classes)
        built = self.build(request, self.operation_for(request, user), path_kwargs, user, key,
                           started)
        if access.throttle_classes():
            access.throttle(request, built, self, drf_request)
        return built

    def operation_for(self, request, user):
        operation = self.operations.get(request.method)
        if operation is None:
            raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
        operation = get_registry().select(operation, request.META.get("QUERY_STRING", ""))
        if operation.admin:
            if not app_settings.ADMIN_OPERATIONS:
                raise NotFound(f"Invalid URL ({request.method} {request.path})",
                               code="unknown_url")
            if not user.is_superuser:
                raise PermissionDenied("Organization administration is for superusers' keys.")
        return operation

    def build(self, request, operation, path_kwargs, user, key, started):
        """The request's invocation; one refused (bad body, too large...) is recorded as a
        rejected call before the error goes out."""
        try:
            return invocation.from_request(request, operation, path_kwargs, user=user,
                                           api_key=key, started=started)
        except OpenAIDjangoError as exc:
            if getattr(exc, "invocation", None) is not None:
                exc.call = recorder.reject(exc.invocation, exc)
            raise


class PassthroughView(OperationView):
    """Any path under /v1/ that neither spec describes (``PASSTHROUGH = "record"``)."""

    def operation_for(self, request, user):
        if app_settings.PASSTHROUGH != "record" or _is_admin_path(request.path):
            raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
        path = "/" + request.path.split("/v1/", 1)[1]
        return invocation.passthrough_operation(request.method, path)

    def dispatch(self, request, *args, **kwargs):
        # The unknown path's own parts are not path parameters of an operation.
        return super().dispatch(request)


class AsyncOperationView(OperationView):
    """:class:`OperationView` as a coroutine, served under ASGI (``TRANSPORT``): the key, the
    body and the record's start run in the database pool in one hop, the upstream is asked on
    the event loop, and a stream is relayed event by event as it arrives."""

    # Django reads a view's mode from its handler methods; this one has only ``dispatch``.
    view_is_async = True

    async def dispatch(self, request, *args, **kwargs):
        started = time.perf_counter()
        try:
            begun = await gateway.abegin(lambda: self.begin(request, kwargs, started))
            if isinstance(begun, gateway.Result):
                return to_response(begun)
            invocation_, call = begun
            return to_response(await gateway.aperform(invocation_, call))
        except Exception as exc:
            return exception_handler(exc)

    def begin(self, request, path_kwargs, started):
        """Key, operation, body and the record first: ``(invocation, call)``, or the
        :class:`~openai_django.gateway.Result` when there is nothing to send."""
        built = self.invocation(request, path_kwargs, started)
        begun = gateway.begin(built)
        return begun if isinstance(begun, gateway.Result) else (built, begun)


class AsyncPassthroughView(AsyncOperationView):
    operation_for = PassthroughView.operation_for

    async def dispatch(self, request, *args, **kwargs):
        return await super().dispatch(request)


def _is_admin_path(path):
    # Organization administration is never passed through, whatever ADMIN_OPERATIONS says.
    tail = path.split("/v1/", 1)[-1]
    return tail.startswith("organization") or (tail.startswith("projects/") and
                                                "/roles" in tail)


def to_response(result):
    """The HTTP answer for a :class:`~openai_django.gateway.Result`."""
    call = result.call
    if result.queued:
        location = reverse("openai_django:call-detail", args=[call.pk])
        return json_response({"id": str(call.pk), "object": "call", "status": call.status},
                             status=202, headers={"Location": location,
                                                  "X-Call-Id": str(call.pk)})
    headers = dict(result.headers)
    content_type = headers.pop("content-type", "application/json")
    if result.stream is not None:
        response = StreamingHttpResponse(result.stream, status=result.status,
                                         content_type=content_type)
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    elif result.artifact is not None:
        from openai_django.storage import open_artifact  # streams from S3, not via memory

        response = FileResponse(open_artifact(result.artifact), status=result.status,
                                content_type=content_type)
    else:
        response = HttpResponse(result.body, status=result.status, content_type=content_type)
    set_headers(response, headers)
    if result.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def set_headers(response, headers):
    """``response[key] = value`` for each of ``headers`` (a dict), as Django sets them.

    The upstream's dozen headers are checked all at once: when every name and value is a
    ``str``, all ASCII and without CR or LF, Django's ``ResponseHeaders.__setitem__`` would
    store each unchanged (``(name, value)`` under ``name.lower()``), so they are stored so.
    Anything else (bytes, a number, a non-ASCII value to MIME-encode, a newline to refuse
    with ``BadHeaderError``) goes through Django, one header at a time. Callgrind, 200
    recorded chat calls in one process (13 upstream headers): 3.52 M -> 3.45 M instructions
    a call, with the WSGI entry's start_response reading the stored pairs.
    """
    items = headers.items()
    try:
        joined = "\n".join(chain.from_iterable(items))
    except TypeError:  # not all str
        joined = "\r"
    if joined.count("\n") == 2 * len(headers) - 1 and "\r" not in joined and joined.isascii():
        store = response.headers._store
        for key, value in items:
            store[key.lower().strip()] = (key, value)  # ResponseHeaders.__setitem__'s key
    else:
        for key, value in items:
            response[key] = value


def recorded_response(call):
    """The upstream's answer as it was returned, from the record (the admin's "response")."""
    response = to_response(gateway.recorded(call))
    del response["Idempotent-Replayed"]
    return response


# -- the REST log ------------------------------------------------------------------------


class GatewayAPIView(APIView):
    """Key auth and OpenAI-style errors for the REST log."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = []
    renderer_classes = [JSONRenderer]

    def get_authenticators(self):
        # The same callers as the operations (AUTHENTICATION_CLASSES), keys by default.
        classes = access.authentication_classes() or self.authentication_classes
        return [cls() for cls in classes]

    def get_throttles(self):
        return [cls() for cls in access.throttle_classes()]

    def permission_denied(self, request, message=None, code=None):
        if request.authenticators and not request.successful_authenticator:
            access.not_authenticated(request)
        super().permission_denied(request, message, code)

    def get_exception_handler(self):
        return exception_handler


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
        for name in ("operation", "status", "model", "object_id"):
            if params.get(name):
                calls = calls.filter(**{name: params[name]})
        calls = tagging_views.filter_log(calls, params)
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
            raise Conflict(f"Call {call.pk} is {call.status}: it has no response yet.",
                           code="call_not_finished", call=call)
        response = recorded_response(call)
        response["Content-Security-Policy"] = DOWNLOAD_CSP
        response["X-Content-Type-Options"] = "nosniff"
        return response


class CallCancelView(GatewayAPIView):
    def post(self, request, call_id):
        call = _get_call(request, call_id)
        from openai_django import tasks

        if not tasks.cancel(call):
            raise Conflict(f"Call {call.pk} is {call.status}: only a queued call can be "
                           f"cancelled.", code="call_not_cancellable", call=call)
        call.refresh_from_db()
        return json_response(call_to_dict(call, request), headers={"X-Call-Id": str(call.pk)})


class CallFeedbackView(tagging_views.FeedbackMixin, GatewayAPIView):
    """``GET``/``POST``/``DELETE /v1/calls/<id>/feedback``: the call's own user's verdict."""

    get_call = staticmethod(_get_call)


class ArtifactContentView(GatewayAPIView):
    def get(self, request, call_id, artifact_id):
        call = _get_call(request, call_id)
        try:
            uuid.UUID(str(artifact_id))
        except ValueError:
            raise NotFound(f"No stored artifact '{artifact_id}' in call {call.pk}.",
                           call=call) from None
        artifact = call.artifacts.filter(pk=artifact_id).first()
        if artifact is None or not artifact.file or artifact.purged_at:
            raise NotFound(f"No stored artifact '{artifact_id}' in call {call.pk}.", call=call)
        from openai_django.storage import artifact_response

        response = artifact_response(artifact)
        response["X-Call-Id"] = str(call.pk)
        return response


class SpecView(View):
    """A bundled spec, public like the API's own documentation."""

    version = "1.2.0"

    def get(self, request):
        return HttpResponse(spec_bytes(self.version),
                            content_type="application/yaml; charset=utf-8")
