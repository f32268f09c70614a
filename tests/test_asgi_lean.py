"""The lean ASGI entry (openai_django/asgi.py) under a real uvicorn started by the tests.

``project.asgi:application`` is Django's ASGI application behind the lean entry: /v1/
operations are served on the event loop, everything else by Django. What tells the two paths
apart from outside is what the lean path exists for: Django's handler gives every request a
thread of its own for as long as its response lasts (a ``ThreadSensitiveContext``, entered by
the site's sync middleware), so N open streams hold N threads under Django and none on the
lean path (counted in /proc/PID/task of the one worker).

* /v1/ through the lean path: streams paced as the stand-in sends them, no thread per stream,
  the record as under Django, the site's security headers on the answer;
* the admin through Django (its session and CSRF middleware ran: the CSRF cookie is set);
* django-cors-headers (natively async middleware) runs on the lean path: preflight and
  ``Access-Control-Allow-Origin`` answered, still no thread per stream;
* Django serves /v1/ (a thread per stream) when ``ASGI_LEAN`` is False, when session auth
  is configured (``AUTHENTICATION_CLASSES``), and when the site has a sync middleware the
  lean path does not know (which then runs, and a warning names it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request

import httpx
import pytest

from openai_django import conf
from tests.fixtures.asgi import AsgiSite
from tests.test_asgi import (  # noqa: F401 (warm_sdk: a fixture)
    CHAT,
    GAP,
    assert_paced,
    brief,
    finished,
    sdk,
    stamped,
    warm_sdk,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STREAMS = 24  # open at once when threads are counted
# Threads a worker may gain while STREAMS streams are open on the lean path: the database
# pool's (at most DB_THREADS, the sites here keep the default: the warm-up may not have
# started them all when its calls are quick) and two more; a thread a stream would be
# STREAMS or more.
LEAN_THREADS_MAX = conf.DEFAULTS["DB_THREADS"] + 2
SITE_MIDDLEWARE = '''
from django.utils.deprecation import MiddlewareMixin


class StampMiddleware(MiddlewareMixin):
    """A sync middleware of the site's own that the lean path knows nothing about."""

    def process_response(self, request, response):
        response["X-Site-Middleware"] = "ran"
        return response
'''


class LeanSite(AsgiSite):
    """An :class:`AsgiSite` whose settings file also gets ``extra`` lines (rewritten before
    each server with :meth:`configure`)."""

    extra = ""

    def write_settings(self):
        super().write_settings()
        with open(os.path.join(self.workdir, "crash_settings.py"), "a") as fh:
            fh.write(self.extra)
        with open(os.path.join(self.workdir, "lean_site_middleware.py"), "w") as fh:
            fh.write(SITE_MIDDLEWARE)

    def configure(self, overrides=None, extra=""):
        self.overrides = {"PASSTHROUGH": "record", **(overrides or {})}
        self.extra = extra
        self.write_settings()


@pytest.fixture(scope="module")
def lean_site(asgi_upstream):
    site = LeanSite(asgi_upstream.url, overrides={"PASSTHROUGH": "record"})
    yield site
    site.close()


@pytest.fixture
def serve(lean_site, asgi_upstream):
    """``serve(overrides, extra)``: a uvicorn (one worker) on the site with these settings,
    stopped at the test's end."""
    started = []
    asgi_upstream.clear_faults()
    asgi_upstream.configure(ttft_ms=0, gap_ms=0, events=8, job_seconds=0)

    def start(overrides=None, extra=""):
        lean_site.configure(overrides, extra)
        server = lean_site.start_server("uvicorn", name=f"lean-{len(lean_site.servers)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        lean_site.servers.remove(server)
    lean_site.configure()


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


async def _hold_streams(server, key, count, opened):
    """``count`` chat streams open at once; ``opened()`` is called once every one of them has
    had its first event (they are all open then), and the streams are read to their end."""
    first = asyncio.Event()
    seen = [0]
    results = []

    async def one(client):
        async with client.stream("POST", "/v1/chat/completions",
                                 json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200, await response.aread()
            events = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events += 1
                    if events == 1:
                        seen[0] += 1
                        if seen[0] == count:
                            first.set()
            results.append((response.headers["x-call-id"], events))

    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60, limits=limits, trust_env=False) as client:
        tasks = [asyncio.ensure_future(one(client)) for _ in range(count)]
        try:
            await asyncio.wait_for(first.wait(), 30)
            opened()
        finally:
            await asyncio.gather(*tasks)
    return results


def threads_held_by_streams(site, server, upstream, count=STREAMS):
    """How many threads the worker gained while ``count`` streams were open (after a warm-up
    that starts the database pool), and the streams' records."""
    pid = server.worker_pids()[0]
    upstream.configure(events=2, gap_ms=0, ttft_ms=0)
    asyncio.run(_hold_streams(server, site.key, 12, lambda: None))  # the pool's threads
    time.sleep(0.3)
    before = threads_of(pid)
    upstream.configure(events=12, gap_ms=100, ttft_ms=0)
    during = []
    results = asyncio.run(_hold_streams(server, site.key, count,
                                        lambda: during.append(threads_of(pid))))
    assert len(results) == count and all(events == 13 for _, events in results), results
    for call_id, _ in results[:3]:
        row = site.wait_call(call_id, finished)
        assert row["status"] == "succeeded" and row["outcome"] == "ok", brief(row)
    return during[0] - before


def post(server, path, headers, body=None, method="POST"):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with _NO_PROXY.open(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- the lean path -----------------------------------------------------------------------------


@pytest.mark.usefixtures("warm_sdk")
def test_v1_streams_are_lean_paced_and_hold_no_thread(lean_site, serve, asgi_upstream):
    server = serve()
    gained = threads_held_by_streams(lean_site, server, asgi_upstream)
    print(f"\nlean: {STREAMS} open streams, {gained} threads gained")
    assert gained <= LEAN_THREADS_MAX, f"{gained} threads for {STREAMS} open streams"

    _paced_chat(lean_site, server, asgi_upstream, "uvicorn-lean")


def test_v1_answers_carry_the_sites_security_headers_and_errors_as_under_django(
        lean_site, serve, asgi_upstream):
    server = serve()
    status, headers, body = post(server, "/v1/chat/completions", lean_site.headers, CHAT)
    assert status == 200, body
    lower = {k.lower(): v for k, v in headers.items()}
    # SecurityMiddleware and XFrameOptionsMiddleware ran (on the event loop).
    assert lower["x-content-type-options"] == "nosniff"
    assert lower["referrer-policy"] == "same-origin"
    assert lower["cross-origin-opener-policy"] == "same-origin"
    assert lower["x-frame-options"] == "DENY"
    assert "set-cookie" not in lower  # no session machinery ran for a key-authenticated call
    row = lean_site.wait_call(lower["x-call-id"], finished)
    assert row["status"] == "succeeded" and row["http_status"] == 200, brief(row)
    # The same OpenAI-shaped errors as the view gives under Django.
    status, _, body = post(server, "/v1/chat/completions", {"Authorization": "Bearer sk-nope"},
                           CHAT)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", body
    status, _, body = post(server, "/v1/chat/completions", lean_site.headers, {"model": 1})
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_admin_and_site_pages_go_through_django(lean_site, serve):
    server = serve()
    status, headers, body = post(server, "/admin/login/", {}, method="GET")
    assert status == 200 and b"csrfmiddlewaretoken" in body
    cookies = " ".join(v for k, v in headers.items() if k.lower() == "set-cookie")
    assert "csrftoken=" in cookies  # CsrfViewMiddleware ran: Django's full stack
    # The REST log (a DRF view under /v1/) is Django's too, and answers.
    status, _, body = post(server, "/v1/calls?limit=1", lean_site.headers, method="GET")
    assert status == 200 and json.loads(body)["object"] == "list"


CORS = '''
INSTALLED_APPS = [*INSTALLED_APPS, "corsheaders"]
MIDDLEWARE = ["corsheaders.middleware.CorsMiddleware", *MIDDLEWARE]
CORS_ALLOWED_ORIGINS = ["https://app.example"]
'''


def test_cors_middleware_runs_on_the_lean_path(lean_site, serve, asgi_upstream):
    server = serve(extra=CORS)
    status, headers, _ = post(server, "/v1/chat/completions", {
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}, method="OPTIONS")
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and lower["access-control-allow-origin"] == "https://app.example"
    assert "POST" in lower["access-control-allow-methods"]
    status, headers, body = post(server, "/v1/chat/completions",
                                 {**lean_site.headers, "Origin": "https://app.example"}, CHAT)
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and lower["access-control-allow-origin"] == "https://app.example"
    status, headers, _ = post(server, "/v1/chat/completions",
                              {**lean_site.headers, "Origin": "https://evil.example"}, CHAT)
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}
    assert threads_held_by_streams(lean_site, server, asgi_upstream) <= LEAN_THREADS_MAX


# -- Django serves /v1/ ------------------------------------------------------------------------


@pytest.mark.parametrize("classes, needs", [
    (None, False),
    ([], True),  # a wrong setting (E031): Django serves, and says so
    (["openai_django.auth.APIKeyAuthentication"], False),
    (["openai_django.auth.APIKeyAuthentication",
      "rest_framework.authentication.SessionAuthentication"], True),
    (["rest_framework.authentication.BasicAuthentication"], True),  # a site's choice: Django
    (["no.such.Authentication"], True),
])
def test_which_authentication_needs_the_sites_middleware(settings, classes, needs):
    from openai_django.asgi import needs_site_auth

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "AUTHENTICATION_CLASSES": classes}
    assert needs_site_auth() is needs


@pytest.mark.usefixtures("warm_sdk")
@pytest.mark.parametrize("case", ["opt-out", "session-auth", "unknown-middleware"])
def test_django_serves_v1_when_the_lean_path_is_off(lean_site, serve, asgi_upstream, case):
    overrides, extra = {}, ""
    if case == "opt-out":
        overrides = {"ASGI_LEAN": False}
    elif case == "session-auth":
        overrides = {"AUTHENTICATION_CLASSES": [
            "openai_django.auth.APIKeyAuthentication",
            "rest_framework.authentication.SessionAuthentication"]}
    else:
        extra = 'MIDDLEWARE = [*MIDDLEWARE, "lean_site_middleware.StampMiddleware"]\n'
    server = serve(overrides, extra)
    gained = threads_held_by_streams(lean_site, server, asgi_upstream)
    print(f"\n{case}: {STREAMS} open streams, {gained} threads gained")
    assert gained >= STREAMS, f"{gained} threads for {STREAMS} streams: not Django's handler"
    if case == "opt-out":  # streams are still paced as sent under Django's handler
        _paced_chat(lean_site, server, asgi_upstream, f"uvicorn-{case}")
    if case == "unknown-middleware":
        status, headers, _ = post(server, "/v1/chat/completions", lean_site.headers, CHAT)
        lower = {k.lower(): v for k, v in headers.items()}
        assert status == 200 and lower.get("x-site-middleware") == "ran", headers
        log = server.log_tail(20_000)
        assert "lean ASGI entry is off" in log and "StampMiddleware" in log, log


def _paced_chat(site, server, upstream, kind):
    upstream.configure(events=5, gap_ms=int(GAP * 1000), ttft_ms=int(GAP * 1000))
    client = sdk(site, server)
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as raw:
        call_id = raw.headers["x-call-id"]
        arrivals = stamped(raw.parse())
    client.close()
    assert_paced(kind, "chat", [t for t, _ in arrivals])
    row = site.wait_call(call_id, finished)
    assert row["status"] == "succeeded" and row["operation"] == "createChatCompletion"
    assert [json.loads(e)["id"] for e in row["stream_events"]] == [c.id for _, c in arrivals]


def test_request_started_is_sent_when_the_site_listens():
    """Django's own receivers of ``request_started`` concern the calling thread's database
    connections (the lean path's thread, the event loop, has none): the lean path sends the
    signal only when the site connected a receiver of its own."""
    from django.core import signals

    from openai_django.asgi import _site_receivers

    assert not _site_receivers(signals.request_started)

    def sites_own(**kwargs):
        pass

    signals.request_started.connect(sites_own)
    try:
        assert _site_receivers(signals.request_started)
    finally:
        signals.request_started.disconnect(sites_own)
    assert not _site_receivers(signals.request_started)
