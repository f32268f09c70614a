"""The lean WSGI entry (openai_django/wsgi.py), spoken to through the WSGI protocol itself.

Every test builds a WSGI environ (PEP 3333, as a server makes one), calls the demo's
``project.wsgi.application`` (Django's WSGI application behind the lean entry) and reads what
it gives ``start_response`` and the body it returns, then closes it as a server does. The
servers the other tests start (granian, gunicorn) serve the same application.

What tells the two paths apart from outside: middleware of the site's own, recognisable by a
header each sets. One listed in ``ASGI_LEAN_SKIP_MIDDLEWARE`` runs for the admin and not for
/v1/ on the lean path; one listed in ``ASGI_LEAN_INLINE_MIDDLEWARE`` runs on both; one in
neither list turns the lean path off (Django serves /v1/ and runs it), as does
``WSGI_LEAN = False``. (The entry rebuilds its plan when a test changes ``MIDDLEWARE`` or
``OPENAI_DJANGO``: ``setting_changed``.)
"""

import io
import json
import wsgiref.util

import pytest
from django.utils.deprecation import MiddlewareMixin

from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SEEN = "tests.test_wsgi_lean.SeenMiddleware"


class SeenMiddleware(MiddlewareMixin):
    """A site middleware: marks every response it saw."""

    def process_response(self, request, response):
        response["X-Seen-By-Site"] = "1"
        return response


def call(application, method, path, body=None, headers=None):
    """One request through the WSGI protocol: ``(status, headers by lower-case name, body)``."""
    data = json.dumps(body).encode() if body is not None else b""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(data),
               "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "application/json",
               "SERVER_NAME": "testserver", "HTTP_HOST": "testserver"}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    wsgiref.util.setup_testing_defaults(environ)
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = {name.lower(): value for name, value in response_headers}

    result = application(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        result.close()  # what a server does: request_finished, the response's resources
    return seen["status"], seen["headers"], content


@pytest.fixture
def application(settings):
    """The demo's WSGI application; ``application.fresh()`` builds it anew, as a server
    process would at start, after a test changed ``MIDDLEWARE`` (Django's handler loads its
    middleware once)."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    from openai_django.wsgi import get_wsgi_application
    from project.wsgi import application

    application.fresh = get_wsgi_application
    return application


def _auth(api_key):
    return {"Authorization": f"Bearer {api_key}"}


def test_v1_on_the_lean_path_is_the_same_call(application, upstream, api_key, user):
    status, headers, content = call(application, "POST", "/v1/chat/completions", CHAT,
                                    _auth(api_key))
    assert status == 200
    answer = json.loads(content)
    assert answer["object"] == "chat.completion"
    row = Call.objects.get(pk=headers["x-call-id"])
    assert row.status == Call.Status.SUCCEEDED and row.user == user
    assert row.response_body == answer and row.request_body == CHAT
    # The site's header-only middleware ran (Security, XFrameOptions).
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"

    status, headers, content = call(application, "POST", "/v1/chat/completions",
                                    {**CHAT, "stream": True}, _auth(api_key))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert content.rstrip().endswith(b"data: [DONE]")
    assert Call.objects.get(pk=headers["x-call-id"]).status == Call.Status.SUCCEEDED

    status, _, content = call(application, "POST", "/v1/chat/completions", CHAT)
    assert status == 401 and "API key" in json.loads(content)["error"]["message"]


def test_skipped_middleware_runs_for_the_site_only(application, settings, upstream, api_key):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, SEEN]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "ASGI_LEAN_SKIP_MIDDLEWARE": [
        *_default("SKIP"), SEEN]}
    application = application.fresh()
    status, headers, _ = call(application, "POST", "/v1/chat/completions", CHAT,
                              _auth(api_key))
    assert status == 200 and "x-seen-by-site" not in headers
    status, headers, _ = call(application, "GET", "/admin/")
    assert status == 302 and headers["x-seen-by-site"] == "1"  # Django's path, every middleware


def test_inline_middleware_runs_on_both(application, settings, upstream, api_key):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, SEEN]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "ASGI_LEAN_INLINE_MIDDLEWARE": [
        *_default("INLINE"), SEEN]}
    application = application.fresh()
    assert application._get_state()[0].reason is None  # the lean path is on
    status, headers, _ = call(application, "POST", "/v1/chat/completions", CHAT,
                              _auth(api_key))
    assert status == 200 and headers["x-seen-by-site"] == "1"


@pytest.mark.parametrize("how", ["unknown middleware", "WSGI_LEAN off", "session auth"])
def test_django_serves_v1_when_the_lean_path_is_off(application, settings, upstream, api_key,
                                                    how, caplog):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, SEEN]
    if how == "WSGI_LEAN off":
        settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "WSGI_LEAN": False,
                                  "ASGI_LEAN_SKIP_MIDDLEWARE": [*_default("SKIP"), SEEN]}
    elif how == "session auth":
        settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "AUTHENTICATION_CLASSES": [
            "openai_django.auth.APIKeyAuthentication",
            "rest_framework.authentication.SessionAuthentication"],
            "ASGI_LEAN_SKIP_MIDDLEWARE": [*_default("SKIP"), SEEN]}
    application = application.fresh()
    with caplog.at_level("WARNING", logger="openai_django.wsgi"):
        status, headers, _ = call(application, "POST", "/v1/chat/completions", CHAT,
                                  _auth(api_key))
    assert status == 200
    assert headers["x-seen-by-site"] == "1"  # Django served it, through every middleware
    assert Call.objects.get(pk=headers["x-call-id"]).status == Call.Status.SUCCEEDED
    if how == "unknown middleware":
        assert SEEN in caplog.text


def _default(which):
    from openai_django.conf import DEFAULTS

    return list(DEFAULTS[f"ASGI_LEAN_{which}_MIDDLEWARE"])
