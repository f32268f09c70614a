"""views.set_headers stores the upstream's headers exactly as Django's ResponseHeaders would,
and still refuses a header split by CR or LF."""

import pytest
from django.http import BadHeaderError, HttpResponse

from openai_django.views import set_headers

CASES = [
    {},
    {"x-request-id": "req_1", "openai-model": "gpt-4o-mini", "X-Call-Id": "abc"},
    {"x-a": "1", "X-A": "2"},  # the same header twice: the last one, under its last spelling
    {"x-name": "café"},  # latin-1, not ASCII
    {"x-name": "naïve ✓"},  # MIME-encoded by Django
    {"x-bytes": b"raw", "x-int": 3},
    {"Content-Type": "text/plain"},  # replaces the response's own
]


@pytest.mark.parametrize("headers", CASES)
def test_same_as_django(headers):
    ours, django = HttpResponse(b"{}"), HttpResponse(b"{}")
    set_headers(ours, headers)
    for key, value in headers.items():
        django[key] = value
    assert list(ours.items()) == list(django.items())
    assert ours.headers._store == django.headers._store


@pytest.mark.parametrize("headers", [
    {"x-ok": "1", "x-evil": "a\r\nSet-Cookie: s=1"},
    {"x-evil": "a\nb"},
    {"x-evil\r\nX-Other": "1"},
    {"x-evil": "caf\xe9\r\nX: 1"},
])
def test_newlines_refused(headers):
    with pytest.raises(BadHeaderError):
        set_headers(HttpResponse(b"{}"), headers)
