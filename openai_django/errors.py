"""One small exception hierarchy; every failure reaches the client as an OpenAI error body.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the status below.
"""

import orjson
from django.http import HttpResponse


class OpenAIDjangoError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code = None
    default_message = "The server had an error while processing your request."

    def __init__(self, message=None, *, param=None, code=None, headers=None):
        self.message = message or self.default_message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
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
        return error_response(self.body(), self.status_code, self.headers)


class InvalidRequest(OpenAIDjangoError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(OpenAIDjangoError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"
    default_message = "Incorrect API key provided."


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
                  param=error.get("param"), code=error.get("code"))
        exc.status_code = status
        exc.error_type = error.get("type") or cls.error_type
        exc.upstream_body = body
        exc.call = call
        return exc


def error_body(message, *, type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(body, status, headers=None):
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response[key] = value
    return response
