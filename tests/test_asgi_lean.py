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


def test_a_response_is_closed_on_the_loop_only_when_its_close_needs_no_thread(rf, tmp_path):
    """The lean path closes a response on the event loop (one hop to the database pool fewer
    a call) when nothing its close runs needs the database or a file: the request's own
    closer without uploads, a stream relay that finished its record, no site receiver of
    ``request_finished``. Anything else is closed in the pool."""
    from django.core import signals
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.http import FileResponse, HttpResponse

    from openai_django.asgi import _closes_on_the_loop
    from openai_django.gateway import StreamRelay

    def answered(request, response):
        response._resource_closers.append(request.close)  # as the lean entry does
        return response

    request = rf.post("/v1/chat/completions", data=b"{}", content_type="application/json")
    assert _closes_on_the_loop(answered(request, HttpResponse(b"{}")), request)

    upload = rf.post("/v1/files", {"purpose": "batch",
                                   "file": SimpleUploadedFile("a.jsonl", b"{}\n")})
    assert upload.FILES["file"].name == "a.jsonl"  # parsed: the request holds the file
    assert not _closes_on_the_loop(answered(upload, HttpResponse(b"{}")), upload)

    path = tmp_path / "artifact.bin"
    path.write_bytes(b"x")
    with open(path, "rb") as fh:
        assert not _closes_on_the_loop(answered(request, FileResponse(fh)), request)

    relay = StreamRelay.__new__(StreamRelay)  # only its state is read here
    relay.finished = False
    streamed = answered(request, HttpResponse(b""))
    streamed._resource_closers.append(relay.close)
    assert not _closes_on_the_loop(streamed, request)  # its close finishes the record
    relay.finished = True
    assert _closes_on_the_loop(streamed, request)

    def sites_own(**kwargs):
        pass

    signals.request_finished.connect(sites_own)
    try:
        assert not _closes_on_the_loop(answered(request, HttpResponse(b"{}")), request)
    finally:
        signals.request_finished.disconnect(sites_own)


def test_a_sites_request_finished_receiver_runs_in_the_pool(lean_site, serve, tmp_path):
    """A receiver of the site's own may use the ORM: the lean path then closes the response in
    the database pool, as Django's handler closes it in a thread."""
    log = tmp_path / "receiver.log"
    server = serve(extra=f'''
import threading as _threading
from django.core.signals import request_finished as _request_finished


def _note_thread(**kwargs):
    with open({str(log)!r}, "a") as fh:
        fh.write(_threading.current_thread().name + "\\n")


_request_finished.connect(_note_thread, weak=False)
''')
    log.write_text("")  # the server's readiness probe went through Django's handler
    status, headers, body = post(server, "/v1/chat/completions", lean_site.headers, CHAT)
    assert status == 200, body
    call_id = {name.lower(): value for name, value in headers.items()}["x-call-id"]
    row = lean_site.wait_call(call_id, finished)
    assert row["status"] == "succeeded", brief(row)
    deadline = time.monotonic() + 5
    while not log.exists() or not log.read_text().strip():
        assert time.monotonic() < deadline, "the site's receiver did not run"
        time.sleep(0.02)
    # The call's close ran in the pool; never on the event loop (uvicorn's main thread). The
    # other lines are Django's handler's threads, which serve the REST log read above.
    names = log.read_text().split()
    assert any(name.startswith("openai-django-db") for name in names), names
    assert "MainThread" not in names, names
