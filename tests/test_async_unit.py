"""The background machinery in one process: retry timing, the attempt state machine,
recovery, the sweep, cancel, queueing on commit, and the concurrency leases.

The task body (:func:`openai_django.tasks.perform`) is called directly here, against the
stand-in upstream and the test database; messages go to an in-memory broker, read back to see
what would have been queued. The same paths through real workers and brokers are in
``test_async_worker.py``.
"""

import os
import subprocess
import uuid
from datetime import timedelta
from email.utils import format_datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

import openai_django
from openai_django import concurrency, recorder, tasks
from openai_django.models import Call, ConcurrencyLease
from openai_django.signals import call_failed, call_finished
from tests.fixtures.celery_worker import point_publisher_at

CHAT = "/v1/chat/completions"


def chat(text="hello"):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def queue(settings):
    """A memory-broker queue of this test's own; returns a function that drains it."""
    name = f"unit-{uuid.uuid4().hex[:8]}"
    settings.OPENAI_DJANGO = {**(settings.OPENAI_DJANGO or {}), "TASK_QUEUE": name}

    def drain():
        from project.celery import app

        messages = []
        with app.connection_for_write() as connection:
            simple = connection.SimpleQueue(name)
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    break
                args, _kwargs, _ = message.decode()
                messages.append({"task": message.headers["task"], "args": list(args),
                                 "eta": message.headers.get("eta")})
                message.ack()
            simple.close()
        return messages

    return drain


@pytest.fixture
def fast_retries(settings, upstream):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "MAX_ATTEMPTS": 3,
                              "RETRY_BACKOFF": 0.5, "RETRY_BACKOFF_MAX": 30}


def received(signal):
    calls = []

    def receiver(sender, call, **kwargs):
        calls.append((call.pk, call.status, call.outcome))

    signal.connect(receiver, weak=False)
    return calls, lambda: signal.disconnect(receiver)


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# -- retry timing --------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.OPENAI_DJANGO = {"RETRY_BACKOFF": 1.0, "RETRY_BACKOFF_MAX": 10, "RETRY_JITTER": True}
    for attempt, full in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        delays = [tasks.backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not a constant
    settings.OPENAI_DJANGO = {"RETRY_BACKOFF": 1.0, "RETRY_BACKOFF_MAX": 10,
                              "RETRY_JITTER": False}
    assert [tasks.backoff(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


def test_retry_after_in_seconds_milliseconds_and_http_dates():
    assert tasks.retry_after({"retry-after": "3"}) == 3
    assert tasks.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = format_datetime(timezone.now() + timedelta(seconds=20), usegmt=True)
    assert 18 <= tasks.retry_after({"retry-after": when}) <= 20
    assert tasks.retry_after({"retry-after": "soon"}) is None
    assert tasks.retry_after({}) is None


def test_retry_plan_is_bounded_by_attempts_and_by_the_longest_wait(settings):
    settings.OPENAI_DJANGO = {"MAX_ATTEMPTS": 3, "RETRY_BACKOFF": 0.1, "RETRY_BACKOFF_MAX": 5}

    class Answer:
        def __init__(self, retry_after):
            self.headers = {"retry-after": retry_after}

    delay, why = tasks.retry_plan(1, Answer("4"))
    assert 4 <= delay and why is None
    delay, why = tasks.retry_plan(3, Answer("4"))
    assert delay is None and "MAX_ATTEMPTS" in why
    delay, why = tasks.retry_plan(1, Answer("60"))
    assert delay is None and "Retry-After" in why and "RETRY_BACKOFF_MAX" in why


# -- queueing ------------------------------------------------------------------------------


def test_a_call_submitted_in_a_transaction_is_queued_only_on_commit(
        db, upstream, queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        call = openai_django.submit("createChatCompletion", **chat())
        assert queue() == []  # not before the commit: a worker could not see the row yet
    assert len(callbacks) == 1
    assert queue() == [{"task": "openai_django.perform_call", "args": [str(call.pk), 1],
                        "eta": None}]
    assert call.status == Call.Status.QUEUED and call.payload


def test_an_unreachable_broker_fails_the_record_and_answers_503(transactional_db, http,
                                                                upstream):
    point_publisher_at("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    try:
        response = http.post(http.base + "/chat/completions", json=chat(),
                             headers={"Prefer": "respond-async"})
        with pytest.raises(tasks.QueueUnavailable) as raised:
            openai_django.submit("createChatCompletion", **chat())
    finally:
        point_publisher_at("memory://")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_unavailable"
    assert raised.value.call.status == Call.Status.FAILED
    for call in Call.objects.all():
        assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.ERROR
        assert call.payload is None
    assert Call.objects.count() == 2


# -- the attempt state machine -------------------------------------------------------------


def test_a_429_schedules_the_next_attempt_and_stale_messages_do_nothing(
        transactional_db, upstream, fast_retries, queue):
    finished, stop = received(call_finished)
    call = openai_django.submit("createChatCompletion", **chat("retry me"))
    assert queue() == [{"task": "openai_django.perform_call", "args": [str(call.pk), 1],
                        "eta": None}]
    upstream.fault(path=CHAT, kind="status", status=429, retry_after=1, times=1)
    try:
        assert tasks.perform(call.pk, 1) == "retry"
        call.refresh_from_db()
        assert call.status == Call.Status.QUEUED and call.attempt_count == 1
        assert call.attempts[0]["status"] == 429 and call.attempts[0]["retry_in"] >= 1
        (message,) = queue()
        assert message["args"] == [str(call.pk), 2] and message["eta"]
        assert call.payload  # still there for the next attempt
        assert finished == []  # no signal until the call is over
        assert tasks.perform(call.pk, 1) == "stale"  # a duplicate of the first message
        assert tasks.perform(call.pk, 2) == Call.Status.SUCCEEDED
        assert tasks.perform(call.pk, 2) == "stale"
    finally:
        stop()
    call.refresh_from_db()
    assert [a["status"] for a in call.attempts] == [429, 200]
    assert finished == [(call.pk, Call.Status.SUCCEEDED, Call.Outcome.OK)]
    assert len(upstream.requests()) == 2


def _running(call, pid, host=None, attempt=1):
    entry = {"n": attempt, "host": host or tasks.HOST, "pid": pid,
             "pst": tasks._proc_start(pid), "started": timezone.now().isoformat()}
    Call.objects.filter(pk=call.pk).update(status=Call.Status.RUNNING, attempt_count=attempt,
                                           attempts=[entry], started_at=timezone.now())
    call.refresh_from_db()
    return call


def test_a_redelivered_message_leaves_a_live_holder_alone(transactional_db, upstream, queue):
    call = openai_django.submit("createChatCompletion", **chat())
    _running(call, upstream.pid)  # a live process of this host holds attempt 1
    assert tasks.perform(call.pk, 1) == "in_progress"
    _running(call, os.getpid())  # this process, performing it right now (threads pool)
    tasks._active.add(call.pk)
    try:
        assert tasks.perform(call.pk, 1) == "in_progress"
    finally:
        tasks._active.discard(call.pk)
    _running(call, 12345, host="another-machine")
    assert tasks.perform(call.pk, 1) == "in_progress"
    assert upstream.requests() == []


def test_a_redelivered_message_recovers_an_attempt_whose_process_died(transactional_db,
                                                                       upstream, queue):
    call = openai_django.submit("createChatCompletion", **chat("again"))
    _running(call, dead_pid())
    assert tasks.perform(call.pk, 1) == Call.Status.SUCCEEDED
    call.refresh_from_db()
    assert [a["outcome"] for a in call.attempts] == ["lost", "ok"]
    assert call.attempt_count == 2 and len(upstream.requests()) == 1


def test_sweep_requeues_or_marks_lost(transactional_db, upstream, queue, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STALE_RUNNING_AFTER": 60}
    failed, stop = received(call_failed)
    fresh_elsewhere = _running(openai_django.submit("createChatCompletion", **chat()), 1,
                               host="another-machine")
    dead_here = _running(openai_django.submit("createChatCompletion", **chat()), dead_pid())
    old_elsewhere = _running(openai_django.submit("createChatCompletion", **chat()), 1,
                             host="another-machine")
    Call.objects.filter(pk=old_elsewhere.pk).update(
        started_at=timezone.now() - timedelta(seconds=61))
    upload = _running(openai_django.submit(
        "createFile", purpose="fine-tune", file=("a.jsonl", b"{}\n")), dead_pid())
    sync = recorder.start(openai_django.api.build_invocation("createChatCompletion", **chat()))
    Call.objects.filter(pk=sync.pk).update(started_at=timezone.now() - timedelta(hours=1))
    queue()
    try:
        assert tasks.sweep() == {"requeued": 2, "lost": 2, "requeued_queued": 0}
    finally:
        stop()
    requeued = sorted(m["args"][0] for m in queue())
    assert requeued == sorted([str(dead_here.pk), str(old_elsewhere.pk)])
    states = {c.pk: (c.status, c.outcome) for c in Call.objects.all()}
    assert states[fresh_elsewhere.pk] == (Call.Status.RUNNING, "")
    assert states[dead_here.pk] == (Call.Status.QUEUED, "")
    assert states[upload.pk] == (Call.Status.FAILED, Call.Outcome.LOST)
    assert states[sync.pk] == (Call.Status.FAILED, Call.Outcome.LOST)
    assert sorted(pk for pk, *_ in failed) == sorted([upload.pk, sync.pk])
    assert upstream.requests() == []


def test_sweep_requeues_queued_calls_whose_message_was_lost(transactional_db, upstream, queue,
                                                            settings):
    call = openai_django.submit("createChatCompletion", **chat())
    queue()
    Call.objects.filter(pk=call.pk).update(created=timezone.now() - timedelta(minutes=30))
    assert tasks.sweep()["requeued_queued"] == 0  # off by default
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STALE_QUEUED_AFTER": 600}
    assert tasks.sweep()["requeued_queued"] == 1
    assert [m["args"] for m in queue()] == [[str(call.pk), 1]]


def test_cancel_only_a_queued_call(transactional_db, upstream, queue, http, user):
    failed, stop = received(call_failed)
    call = openai_django.submit("createChatCompletion", **chat(), user=user)
    try:
        assert tasks.cancel(call) is True
        assert tasks.cancel(call) is False
    finally:
        stop()
    assert failed == [(call.pk, Call.Status.CANCELLED, Call.Outcome.CANCELLED)]
    answer = http.get(http.base + f"/calls/{call.pk}/response")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "call_cancelled"
    assert tasks.perform(call.pk, 1) == "stale"
    running = _running(openai_django.submit("createChatCompletion", **chat()), os.getpid())
    assert tasks.cancel(running) is False
    assert upstream.requests() == []


def test_a_call_whose_input_file_is_gone_fails_cleanly(transactional_db, upstream, queue,
                                                       media_root):
    call = openai_django.submit("createTranscription", model="whisper-1",
                                file=("talk.mp3", b"ID3 not really audio", "audio/mpeg"))
    artifact = call.artifacts.get()
    artifact.file.storage.delete(artifact.file.name)
    assert tasks.perform(call.pk, 1) == "failed"
    call.refresh_from_db()
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.ERROR
    assert upstream.requests() == []


# -- concurrency leases --------------------------------------------------------------------


@pytest.fixture(params=["db", "redis"])
def caps(request, settings, transactional_db):
    overrides = {"CONCURRENCY": {"*": 2, "gpt-4o": 1}, "CONCURRENCY_BACKEND": request.param,
                 "BASE_URL": f"http://upstream-{uuid.uuid4().hex[:8]}.invalid/v1"}
    if request.param == "redis":
        overrides["CONCURRENCY_REDIS_URL"] = request.getfixturevalue("celery_redis_url")
    settings.OPENAI_DJANGO = {**(settings.OPENAI_DJANGO or {}), **overrides}
    return request.param


def test_leases_cap_the_upstream_and_each_model(caps):
    first = concurrency.acquire("gpt-4o", wait=0)
    assert first is not None and len(first.held) == 2  # the upstream's cap and the model's
    assert concurrency.acquire("gpt-4o", wait=0) is None  # gpt-4o is full (1)
    second = concurrency.acquire("gpt-4o-mini", wait=0)
    assert second is not None and len(second.held) == 1
    assert concurrency.acquire("gpt-4o-mini", wait=0) is None  # the upstream is full (2)
    assert sorted(concurrency.in_use("gpt-4o").values()) == [1, 2]
    first.release()
    first.release()  # twice is harmless
    third = concurrency.acquire("gpt-4o", wait=0)
    assert third is not None
    third.release()
    second.release()
    assert sorted(concurrency.in_use("gpt-4o").values()) == [0, 0]


def test_a_waiter_gets_the_slot_as_soon_as_it_is_released(caps):
    import threading
    import time

    held = concurrency.acquire("gpt-4o", wait=0)
    threading.Timer(0.3, held.release).start()
    started = time.monotonic()
    lease = concurrency.acquire("gpt-4o", wait=5)
    waited = time.monotonic() - started
    assert lease is not None and 0.25 <= waited < 2.5
    lease.release()


def test_a_dead_holders_lease_expires(caps, settings):
    import time

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CONCURRENCY_LEASE_SECONDS": 0.5}
    concurrency.acquire("gpt-4o", wait=0)  # never released, as by a killed worker
    assert concurrency.acquire("gpt-4o", wait=0) is None
    time.sleep(0.6)
    lease = concurrency.acquire("gpt-4o", wait=0)
    assert lease is not None
    lease.release()
    if caps == "db":
        assert ConcurrencyLease.objects.count() == 0


def test_bad_caps_are_a_clear_configuration_error(settings):
    settings.OPENAI_DJANGO = {"CONCURRENCY": {"*": 0}}
    with pytest.raises(ImproperlyConfigured, match=r"CONCURRENCY'\]\['\*'\]"):
        concurrency.caps_for("gpt-4o")
    settings.OPENAI_DJANGO = {"CONCURRENCY": {"*": 1}, "CONCURRENCY_BACKEND": "etcd"}
    with pytest.raises(ImproperlyConfigured, match="CONCURRENCY_BACKEND"):
        concurrency.acquire("gpt-4o")


def test_waiting_for_a_slot_is_not_an_attempt(transactional_db, upstream, queue, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CONCURRENCY": {"*": 1},
                              "CONCURRENCY_BACKEND": "db", "CONCURRENCY_WAIT": 0.05}
    call = openai_django.submit("createChatCompletion", **chat())
    queue()
    busy = concurrency.acquire("gpt-4o-mini", wait=0)
    assert tasks.perform(call.pk, 1) == "waiting"
    call.refresh_from_db()
    assert call.status == Call.Status.QUEUED and call.attempt_count == 0
    assert [m["args"] for m in queue()] == [[str(call.pk), 1]]  # back in the queue, as is
    busy.release()
    assert tasks.perform(call.pk, 1) == Call.Status.SUCCEEDED
    call.refresh_from_db()
    assert call.attempt_count == 1 and "leases" in call.attempts[0]
    assert ConcurrencyLease.objects.count() == 0


def test_a_metadata_only_background_call_keeps_no_input_files(transactional_db, upstream, queue,
                                                              user, media_root):
    from openai_django.models import APIKey

    key, _ = APIKey.generate(user, name="private", metadata_only=True)
    call = openai_django.submit("createTranscription", model="whisper-1", api_key=key,
                                file=("talk.mp3", b"ID3 private words", "audio/mpeg"))
    stored = call.artifacts.get()  # kept until the worker has sent it...
    storage, name = stored.file.storage, stored.file.name  # any storage: local or S3
    assert call.metadata_only and storage.exists(name)
    assert tasks.perform(call.pk, 1) == Call.Status.SUCCEEDED
    call.refresh_from_db()
    assert call.artifacts.count() == 0 and not storage.exists(name)  # ...and not after
    assert call.request_body is None and call.response_body is None
    assert upstream.requests()[-1]["files"][0]["bytes"] == len(b"ID3 private words")
