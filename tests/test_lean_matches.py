"""The lean entries keep each operation path's URL match (asgi.LeanEntry._operation_match):
still right when the URLconf changes, bounded, and never kept for paths that are not
operations. Spoken to through the WSGI protocol, as tests/test_wsgi_lean.py does."""

import pytest
from django.urls import include, path

from tests.test_wsgi_lean import CHAT, application, call  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

# A URLconf of its own (ROOT_URLCONF = this module): the gateway under /api/.
urlpatterns = [path("api/", include("openai_django.urls"))]


def _auth(api_key):
    return {"Authorization": f"Bearer {api_key}"}


def test_operation_paths_kept_others_not(application, upstream, api_key):  # noqa: F811
    for _ in range(2):
        status, _, _ = call(application, "POST", "/v1/chat/completions", CHAT, _auth(api_key))
        assert status == 200
    call(application, "GET", "/admin/login/")
    call(application, "GET", "/no-such-page/")
    resolver, kept, keeping = application._matches
    assert keeping
    assert list(kept) == ["/v1/chat/completions"]


def test_a_changed_urlconf_is_followed(application, upstream, api_key, settings):  # noqa: F811
    status, _, _ = call(application, "POST", "/v1/chat/completions", CHAT, _auth(api_key))
    assert status == 200
    settings.ROOT_URLCONF = __name__
    status, _, content = call(application, "POST", "/v1/chat/completions", CHAT,
                              _auth(api_key))
    assert status == 404, content  # no such URL any more: Django's answer
    status, _, content = call(application, "POST", "/api/v1/chat/completions", CHAT,
                              _auth(api_key))
    assert status == 200, content
    assert list(application._matches[1]) == ["/api/v1/chat/completions"]


def test_bounded(application, upstream, api_key, monkeypatch):  # noqa: F811
    monkeypatch.setattr(application, "MATCHES_MAX", 2)
    for n in range(5):
        status, _, _ = call(application, "GET", f"/v1/files/file-{n}", None, _auth(api_key))
        assert status != 500
        assert 1 <= len(application._matches[1]) <= 2
    assert "/v1/files/file-4" in application._matches[1]
