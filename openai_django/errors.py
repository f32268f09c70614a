"""One small exception hierarchy; every failure reaches the client as an OpenAI error body.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the status below.
An error carries the recorded call it concerns (``call=``, its id goes out as ``X-Call-Id``),
and :func:`exception_handler` is the one place an exception becomes a response.
"""

import logging
import math

import orjson
from django.http import HttpResponse

logger = logging.getLogger("openai_django.errors")


class OpenAIDjangoError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code = None
    default_message = "The server had an error while processing your request."

    def __init__(self, message=None, *, param=None, code=None, headers=None, call=None):
        self.message = message or self.default_message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        self.call = call
        super().__init__(self.message)

    def body(self):
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self):
        response = error_response(self.body(), self.status_code, self.headers)
        if self.call is not None:
            response["X-Call-Id"] = str(self.call.pk)
        return response


class InvalidRequest(OpenAIDjangoError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(OpenAIDjangoError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"
    default_message = "Incorrect API key provided."

    def response(self):
        response = super().response()
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response


NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization "
          "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")


class PermissionDenied(OpenAIDjangoError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"
    default_message = "You are not allowed to do this."


class NotFound(OpenAIDjangoError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"
    default_message = "No such object."


class MethodNotAllowed(OpenAIDjangoError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(OpenAIDjangoError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class LengthRequired(OpenAIDjangoError):
    status_code = 411
    error_type = "invalid_request_error"
    default_code = "length_required"
    default_message = ("This server cannot read a chunked request body: send it with a "
                       "Content-Length header.")


class PayloadTooLarge(OpenAIDjangoError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(OpenAIDjangoError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class Unprocessable(OpenAIDjangoError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "idempotency_key_reused"


class Throttled(OpenAIDjangoError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"


class UpstreamUnavailable(OpenAIDjangoError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_unreachable"
    default_message = "The upstream API could not be reached."


class UpstreamBadResponse(UpstreamUnavailable):
    default_code = "upstream_bad_response"
    default_message = "The upstream API sent a response that could not be read."


class UpstreamTimeout(OpenAIDjangoError):
    status_code = 504
    error_type = "upstream_error"
    default_code = "upstream_timeout"
    default_message = "The upstream API did not answer in time."


class UpstreamStatusError(OpenAIDjangoError):
    """The upstream answered an error status. Raised by the Python API (over HTTP the answer
    passes through as it is); status, type, code and message are the upstream's own."""

    error_type = "upstream_error"

    @classmethod
    def from_response(cls, status, body, *, call=None):
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        error = error if isinstance(error, dict) else {}
        exc = cls(error.get("message") or f"The upstream API answered HTTP {status}.",
                  param=error.get("param"), code=error.get("code"), call=call)
        exc.status_code = status
        exc.error_type = error.get("type") or cls.error_type
        exc.upstream_body = body
        return exc


def error_body(message, *, type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(body, status, headers=None):
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def exception_handler(exc, context=None):
    """The response for any exception raised while serving the gateway (DRF's
    ``EXCEPTION_HANDLER`` signature, so the REST log's DRF views use it too)."""
    from rest_framework import exceptions as drf

    if isinstance(exc, OpenAIDjangoError):
        return exc.response()
    if isinstance(exc, drf.NotAuthenticated):
        return AuthenticationFailed(NO_KEY, code=None).response()
    if isinstance(exc, drf.AuthenticationFailed):
        return AuthenticationFailed(str(exc.detail)).response()
    if isinstance(exc, drf.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail)).response()
    if isinstance(exc, drf.PermissionDenied):
        return PermissionDenied(str(exc.detail)).response()
    if isinstance(exc, drf.Throttled):
        wait = getattr(exc, "wait", None)
        return Throttled(str(exc.detail), headers={"Retry-After": str(math.ceil(wait))}
                         if wait is not None else None).response()
    if isinstance(exc, drf.APIException):
        return error_response(error_body(str(exc.detail), code=exc.default_code),
                              exc.status_code)
    logger.exception("Unhandled error in the gateway", exc_info=exc)
    return error_response(
        error_body("The gateway had an error while processing your request.",
                   type="server_error", code="internal_error"), 500)
