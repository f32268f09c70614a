"""The group-commit writer (``OPENAI_DJANGO["WRITER"] = True``) keeps the recorder's promises:
the row is committed before the upstream is asked, finished before the client has its answer,
and a failing statement fails only its own caller."""

import threading

import pytest
from django.db import IntegrityError, connection

from openai_django import recorder, writer
from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def with_writer(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "WRITER": True}


def test_recorded_call_through_the_writer(http, upstream, with_writer, user):
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 200
    call = Call.objects.get(pk=response.headers["X-Call-Id"])  # finished when answered
    assert call.status == Call.Status.SUCCEEDED and call.user == user
    assert call.response_body == response.json() and call.request_body == CHAT
    assert writer.get_writer("default")._pending == []  # nothing left behind

    stream = http.post(f"{http.base}/chat/completions", json={**CHAT, "stream": True})
    assert stream.status_code == 200 and "data: [DONE]" in stream.text
    call = Call.objects.get(pk=stream.headers["X-Call-Id"])
    assert call.status == Call.Status.SUCCEEDED and call.stream_events


def test_row_is_committed_before_the_upstream_is_asked(http, upstream, with_writer):
    seen = {}
    original = recorder.start

    def start_then_look(invocation, **kwargs):
        call = original(invocation, **kwargs)
        # Another connection (another thread) sees the row: it is committed, not pending.
        def look():
            seen["status"] = Call.objects.filter(pk=call.pk).values_list("status", flat=True)\
                .first()
            connection.close()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return call

    recorder_start, recorder.start = recorder.start, start_then_look
    try:
        response = http.post(f"{http.base}/chat/completions", json=CHAT)
    finally:
        recorder.start = recorder_start
    assert response.status_code == 200
    assert seen["status"] == Call.Status.RUNNING


def test_a_failing_insert_fails_only_its_caller(with_writer, user):
    call = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                user=user, idempotency_key="same", request_hash="h")
    Call.objects.record_new(call)
    duplicate = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                     user=user, idempotency_key="same", request_hash="h")
    others = [Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                   user=user) for _ in range(5)]
    errors = []

    def save(c):
        try:
            Call.objects.record_new(c)
        except IntegrityError as exc:
            errors.append((c, exc))

    threads = [threading.Thread(target=save, args=(c,)) for c in [duplicate, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c for c, _ in errors] == [duplicate]
    assert Call.objects.filter(pk__in=[c.pk for c in others]).count() == 5
