"""Background calls through real Celery worker processes, a real broker (Redis, and the
embedded filesystem broker) and the stand-in upstream: submit, poll, complete; retries; worker
loss; a burst of 200 calls; the concurrency cap across workers."""

import hashlib
import io
import struct
import time
import zlib
from datetime import datetime

import pytest
from django.utils import timezone

import openai_django
from openai_django import concurrency, tasks
from openai_django.models import Call
from openai_django.testing import StandinServer
from tests.fixtures.celery_worker import wait_for

pytestmark = pytest.mark.slow

# The filesystem broker (the demo's, beside SQLite) is run once; Redis in both runs.
BOTH_BROKERS = pytest.mark.parametrize(
    "celery_broker", ["redis", pytest.param("filesystem", marks=pytest.mark.once)], indirect=True)
CHAT = "/v1/chat/completions"


def chat(text, **extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def finished(call_id, timeout=60):
    def check():
        call = Call.objects.get(pk=call_id)
        return call if call.is_finished else None

    return wait_for(check, timeout, message=f"call {call_id} to finish")


def upstream_requests(standin, path=CHAT):
    return [r for r in standin.requests() if r["path"] == path]


def png_bytes():
    """A valid 1x1 PNG, built here rather than kept as a fixture file."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


@pytest.fixture
def fast_retries(settings, upstream):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "MAX_ATTEMPTS": 3,
                              "RETRY_BACKOFF": 0.05, "RETRY_BACKOFF_MAX": 10}


# -- async over HTTP -----------------------------------------------------------------------


@BOTH_BROKERS
def test_async_call_over_http_goes_queued_running_succeeded(celery_broker, http, upstream,
                                                           celery_worker_factory):
    celery_worker_factory()
    # The upstream takes a moment, so that polling sees the call running.
    upstream.fault(path=CHAT, kind="delay", seconds=1.0, times=1)
    response = http.post(http.base + "/chat/completions", json=chat("Describe a teapot"),
                         headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body == {"id": body["id"], "object": "call", "status": "queued"}
    assert response.headers["Location"] == f"/v1/calls/{body['id']}"
    assert response.headers["X-Call-Id"] == body["id"]

    seen = []
    def poll():
        status = http.get(http.base + f"/calls/{body['id']}").json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        return status in ("succeeded", "failed", "cancelled")

    wait_for(poll, 30, interval=0.02)
    assert seen[-2:] == ["running", "succeeded"], seen
    assert seen[0] in ("queued", "running")

    answer = http.get(http.base + f"/calls/{body['id']}/response")
    assert answer.status_code == 200
    assert 'You said: "Describe a teapot"' in answer.json()["choices"][0]["message"]["content"]
    detail = http.get(http.base + f"/calls/{body['id']}").json()
    assert detail["mode"] == "async" and detail["attempts"] == 1
    assert detail["attempt_log"][0]["status"] == 200
    assert len(upstream_requests(upstream)) == 1
    # The pending payload is dropped once the call is performed.
    assert Call.objects.get(pk=body["id"]).payload is None


@BOTH_BROKERS
def test_async_multipart_upload_is_stored_first_and_sent_from_storage(
        celery_broker, http, upstream, celery_worker_factory):
    image = png_bytes()
    response = http.post(http.base + "/images/edits", headers={"Prefer": "respond-async"},
                         data={"prompt": "Add a hat", "n": "1", "response_format": "b64_json"},
                         files={"image": ("teapot.png", io.BytesIO(image), "image/png")})
    assert response.status_code == 202, response.text
    call = Call.objects.get(pk=response.json()["id"])
    # No worker yet: the upload is already an artifact in storage, nothing went upstream.
    stored = call.artifacts.get(role="image")
    assert stored.sha256 == hashlib.sha256(image).hexdigest()
    assert stored.file.storage.exists(stored.file.name)
    assert upstream_requests(upstream, "/v1/images/edits") == []

    celery_worker_factory()
    call = finished(call.pk)
    assert call.status == Call.Status.SUCCEEDED, call.error
    sent = upstream_requests(upstream, "/v1/images/edits")
    assert len(sent) == 1
    assert sent[0]["form"]["prompt"] == "Add a hat"
    assert [f["sha256"] for f in sent[0]["files"]] == [hashlib.sha256(image).hexdigest()]
    generated = call.artifacts.filter(role="generated_image")
    assert generated.count() == 1 and generated[0].bytes > 0


def test_cancel_a_queued_call_then_the_worker_leaves_it(celery_broker, http, upstream,
                                                       celery_worker_factory):
    response = http.post(http.base + "/chat/completions", json=chat("never sent"),
                         headers={"Prefer": "respond-async"})
    call_id = response.json()["id"]
    cancelled = http.post(http.base + f"/calls/{call_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = http.post(http.base + f"/calls/{call_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "call_not_cancellable"

    worker = celery_worker_factory()
    wait_for(lambda: "'stale'" in worker.log(), 30, message="the message to be consumed")
    call = Call.objects.get(pk=call_id)
    assert call.status == Call.Status.CANCELLED and call.attempt_count == 0
    assert upstream_requests(upstream) == []


def test_idempotency_key_returns_the_same_background_call(celery_broker, http, upstream,
                                                         celery_worker_factory):
    celery_worker_factory()
    headers = {"Prefer": "respond-async", "Idempotency-Key": "order-42-description"}
    first = http.post(http.base + "/chat/completions", json=chat("once"), headers=headers)
    assert first.status_code == 202
    call = finished(first.json()["id"])
    second = http.post(http.base + "/chat/completions", json=chat("once"), headers=headers)
    assert second.status_code == 202
    assert second.json()["id"] == str(call.pk)
    assert second.json()["status"] == "succeeded"
    other = http.post(http.base + "/chat/completions", json=chat("twice"), headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["param"] == "Idempotency-Key"
    time.sleep(0.5)  # room for a wrongly queued second call to reach the upstream
    assert len(upstream_requests(upstream)) == 1
    assert Call.objects.filter(idempotency_key="order-42-description").count() == 1


# -- the Python API in the background --------------------------------------------------------


def test_submit_with_target_and_callback(celery_broker, upstream, user, celery_worker_factory):
    start = celery_worker_factory
    start()
    product = user  # any model instance of the site: here the user row stands in for one
    call = openai_django.submit("createChatCompletion", **chat("A product page text"),
                                user=user, target=product,
                                callback="tests.async_callbacks.call_done")
    assert call.status == Call.Status.QUEUED and call.source == Call.Source.PYTHON
    call = finished(call.pk)
    assert call.status == Call.Status.SUCCEEDED
    assert list(Call.objects.for_object(product)) == [call]
    lines = wait_for(lambda: start.callback_file.exists()
                     and start.callback_file.read_text().splitlines(), 30,
                     message="the callback task")
    assert lines == [f"{call.pk} succeeded"]


def test_replay_is_a_new_linked_call(celery_broker, upstream, user, celery_worker_factory):
    celery_worker_factory()
    original = finished(openai_django.submit("createChatCompletion", **chat("Say hi"),
                                             user=user).pk)
    replayed = tasks.replay(original.pk, overrides={"temperature": 0.1})
    assert replayed.pk != original.pk and replayed.replay_of_id == original.pk
    replayed = finished(replayed.pk)
    assert replayed.status == Call.Status.SUCCEEDED and replayed.source == Call.Source.REPLAY
    bodies = [r["body"] for r in upstream_requests(upstream)]
    assert bodies[0] == chat("Say hi")
    assert bodies[1] == {**chat("Say hi"), "temperature": 0.1}


# -- retries -------------------------------------------------------------------------------


def test_retry_on_429_honours_retry_after(celery_broker, upstream, fast_retries,
                                          celery_worker_factory):
    celery_worker_factory()
    upstream.fault(path=CHAT, kind="status", status=429, retry_after=2, times=1)
    call = finished(openai_django.submit("createChatCompletion", **chat("busy?")).pk)
    assert call.status == Call.Status.SUCCEEDED and call.outcome == Call.Outcome.OK
    first, second = upstream_requests(upstream)
    # RETRY_BACKOFF is 0.05 s: only Retry-After explains a wait of two seconds.
    assert second["time"] - first["time"] >= 1.95
    assert call.attempt_count == 2
    assert [a["status"] for a in call.attempts] == [429, 200]
    assert call.attempts[0]["retry_in"] >= 2
    assert [a["outcome"] for a in call.attempts] == ["http_error", "ok"]


def test_gives_up_after_bounded_retries_and_says_why(celery_broker, upstream, fast_retries,
                                                     celery_worker_factory):
    celery_worker_factory()
    upstream.fault(path=CHAT, kind="status", status=503, message="overloaded", times=-1)
    call = finished(openai_django.submit("createChatCompletion", **chat("anyone?")).pk)
    assert call.status == Call.Status.FAILED
    assert call.outcome == Call.Outcome.GAVE_UP
    assert call.response_status == 503 and call.error["message"] == "overloaded"
    assert len(upstream_requests(upstream)) == 3 == call.attempt_count
    assert "MAX_ATTEMPTS" in call.attempts[-1]["gave_up"]
    assert all(a["status"] == 503 for a in call.attempts)


def test_client_errors_are_not_retried(celery_broker, upstream, fast_retries,
                                       celery_worker_factory):
    celery_worker_factory()
    upstream.fault(path=CHAT, kind="status", status=400, message="bad things", times=-1)
    call = finished(openai_django.submit("createChatCompletion", **chat("bad")).pk)
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.UPSTREAM_ERROR
    assert call.attempt_count == 1 and len(upstream_requests(upstream)) == 1


def test_connection_reset_is_retried(celery_broker, upstream, fast_retries,
                                     celery_worker_factory):
    celery_worker_factory()
    upstream.fault(path=CHAT, kind="reset", times=1)
    call = finished(openai_django.submit("createChatCompletion", **chat("flaky")).pk)
    assert call.status == Call.Status.SUCCEEDED
    assert [a["outcome"] for a in call.attempts] == ["unreachable", "ok"]


# -- worker loss ---------------------------------------------------------------------------


def _running_at_upstream(call_id, standin, path=CHAT):
    def check():
        call = Call.objects.get(pk=call_id)
        return call.status == Call.Status.RUNNING and upstream_requests(standin, path)

    wait_for(check, 30, message="the call to reach the upstream")


@BOTH_BROKERS
def test_pool_process_killed_mid_call_is_redelivered_and_retried(
        celery_broker, upstream, celery_worker_factory):
    worker = celery_worker_factory()
    upstream.fault(path=CHAT, kind="delay", seconds=5, times=1)
    call = openai_django.submit("createChatCompletion", **chat("survive this"))
    _running_at_upstream(call.pk, upstream)
    killed = worker.kill_child()
    call = finished(call.pk)
    assert call.status == Call.Status.SUCCEEDED
    assert call.attempt_count == 2
    assert [a["outcome"] for a in call.attempts] == ["lost", "ok"]
    assert call.attempts[0]["pid"] == killed
    assert len(upstream_requests(upstream)) == 2


@BOTH_BROKERS
def test_whole_worker_killed_mid_call_is_recovered_by_the_next_worker(
        celery_broker, upstream, celery_worker_factory):
    worker = celery_worker_factory()
    upstream.fault(path=CHAT, kind="delay", seconds=5, times=1)
    call = openai_django.submit("createChatCompletion", **chat("kill -9"))
    _running_at_upstream(call.pk, upstream)
    worker.kill()
    assert Call.objects.get(pk=call.pk).status == Call.Status.RUNNING
    # The next worker's start-up sweep sees a running call of a dead process on this host.
    celery_worker_factory()
    call = finished(call.pk)
    assert call.status == Call.Status.SUCCEEDED
    assert [a["outcome"] for a in call.attempts] == ["lost", "ok"]
    assert len(upstream_requests(upstream)) == 2


def test_lost_call_that_may_have_created_an_object_is_marked_lost(
        celery_broker, upstream, celery_worker_factory):
    worker = celery_worker_factory()
    upstream.fault(path="/v1/files", kind="delay", seconds=5, times=1)
    call = openai_django.submit("createFile", purpose="fine-tune",
                                file=("data.jsonl", b'{"prompt": "a", "completion": "b"}\n',
                                      "application/jsonl"))
    _running_at_upstream(call.pk, upstream, "/v1/files")
    worker.kill()
    celery_worker_factory()
    call = finished(call.pk)
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.LOST
    assert call.error["code"] == "call_lost"
    assert "may have created" in call.attempts[0]["gave_up"]
    assert len(upstream_requests(upstream, "/v1/files")) == 1


def test_stale_running_call_of_another_host_is_swept_after_the_threshold(
        celery_broker, upstream, settings, celery_worker_factory):
    celery_worker_factory()
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STALE_RUNNING_AFTER": 1}
    call = openai_django.submit("createChatCompletion", **chat("orphan"))
    call = finished(call.pk)
    # Make it look like an attempt still running on a machine we cannot check.
    entry = {**call.attempts[0], "host": "elsewhere", "outcome": None}
    Call.objects.filter(pk=call.pk).update(status=Call.Status.RUNNING, attempts=[entry],
                                           started_at=timezone.now())
    # Its holder cannot be checked from here: nothing happens before the threshold...
    assert tasks.sweep()["requeued"] == 0
    time.sleep(1.1)
    assert tasks.sweep() == {"requeued": 1, "lost": 0, "requeued_queued": 0}
    call = finished(call.pk)
    assert call.status == Call.Status.SUCCEEDED and call.attempt_count == 2


# -- many calls ------------------------------------------------------------------------------


@pytest.fixture
def roomy_standin(settings):
    """A stand-in of its own whose request log holds a whole burst."""
    server = StandinServer(api_key="sk-upstream-secret-0000", log_size=5000)
    server.start()
    settings.OPENAI_DJANGO = {**(settings.OPENAI_DJANGO or {}), "BASE_URL": server.url,
                              "API_KEY": "sk-upstream-secret-0000"}
    yield server
    server.stop()


@BOTH_BROKERS
def test_200_calls_all_finish_none_lost_or_duplicated(celery_broker, roomy_standin,
                                                      celery_worker_factory):
    celery_worker_factory(concurrency=2)
    celery_worker_factory(concurrency=2)
    ids = [openai_django.submit("createChatCompletion", **chat(f"job {n}")).pk
           for n in range(200)]
    wait_for(lambda: Call.objects.filter(pk__in=ids, status=Call.Status.SUCCEEDED).count()
             == 200, 180, interval=0.25, message="200 calls to succeed")
    calls = Call.objects.filter(pk__in=ids)
    assert {c.attempt_count for c in calls} == {1}
    sent = [r["body"]["messages"][0]["content"] for r in upstream_requests(roomy_standin)]
    assert sorted(sent) == sorted(f"job {n}" for n in range(200))
    for call in calls:
        assert call.output_text.endswith(f'"{call.request_body["messages"][0]["content"]}"')


def _max_overlap(calls):
    events = []
    for call in calls:
        for attempt in call.attempts:
            events.append((datetime.fromisoformat(attempt["started"]), 1))
            events.append((datetime.fromisoformat(attempt["ended"]), -1))
    level = peak = 0
    for _, step in sorted(events):  # an end sorts before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("backend", ["redis", "db"])
def test_concurrency_cap_holds_across_workers(backend, celery_broker, celery_redis_url,
                                              upstream, settings, celery_worker_factory):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CONCURRENCY": {"*": 2},
                              "CONCURRENCY_BACKEND": backend,
                              "CONCURRENCY_REDIS_URL": celery_redis_url,
                              "CONCURRENCY_WAIT": 0.5}
    upstream.fault(path=CHAT, kind="delay", seconds=0.2, times=-1)
    celery_worker_factory(concurrency=3)
    celery_worker_factory(concurrency=3)
    ids = [openai_django.submit("createChatCompletion", **chat(f"capped {n}")).pk
           for n in range(16)]
    wait_for(lambda: Call.objects.filter(pk__in=ids, status=Call.Status.SUCCEEDED).count()
             == 16, 90, interval=0.2, message="16 capped calls")
    calls = list(Call.objects.filter(pk__in=ids))
    # Six worker processes, two slots: never more than two at the upstream, and the cap is
    # used (two at once), and waiting for a slot was never counted as an attempt.
    assert _max_overlap(calls) == 2
    assert {c.attempt_count for c in calls} == {1}
    assert len(upstream_requests(upstream)) == 16
    assert concurrency.in_use("gpt-4o-mini") == {concurrency.caps_for("gpt-4o-mini")[0][0]: 0}
