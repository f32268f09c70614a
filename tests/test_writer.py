"""The group-commit writer (``OPENAI_DJANGO["WRITER"] = True``) keeps the recorder's promises:
the row is committed before the upstream is asked, finished before the client has its answer,
and a failing statement fails only its own caller."""

import threading

import pytest
from django.db import IntegrityError, ProgrammingError, connection

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


def _items(calls):
    sql, plan = Call.objects._plan(connection, "insert", None)
    return [writer._Item(sql, [convert(get(c)) for get, convert in plan], "insert")
            for c in calls]


sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite",
                                 reason="the batch's own transaction is SQLite's")


@sqlite_only
def test_a_batch_is_one_transaction_and_a_failing_one_fails_only_its_caller(user):
    """A batch of several statements (what concurrent callers share) is committed as one
    transaction on the connection itself; a statement that fails it is rolled back with the
    batch, and the rest are written one by one, so only its own caller has the error. The
    connection is left in autocommit, out of any transaction, either way."""
    def new(**extra):
        return Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                    user=user, **extra)

    connection.ensure_connection()
    assert writer._direct(connection)  # the path under test: BEGIN IMMEDIATE ... COMMIT
    batched = writer.Writer("default")
    firsts = [new(), new()]
    first = _items(firsts)
    statements = []
    connection.connection.set_trace_callback(statements.append)
    try:
        batched._write_batch(connection, first)
    finally:
        connection.connection.set_trace_callback(None)
    assert [i.error for i in first] == [None, None]
    # One transaction: BEGIN, the INSERTs (sqlite3 may trace a statement more than once a
    # row), COMMIT, as sqlite3 ran them.
    words = [s.split(" ", 1)[0] for s in statements]
    assert statements[0] == "BEGIN IMMEDIATE" and words[-1] == "COMMIT"
    assert set(words[1:-1]) == {"INSERT"}
    assert not connection.connection.in_transaction and connection.get_autocommit()
    assert Call.objects.filter(pk__in=[c.pk for c in firsts]).count() == 2

    Call.objects.record_new(new(idempotency_key="same", request_hash="h"))
    calls = [new(), new(idempotency_key="same", request_hash="h"), new()]
    second = _items(calls)
    batched._write_batch(connection, second)
    assert second[0].error is None and second[2].error is None
    assert isinstance(second[1].error, IntegrityError)  # Django's, mapped from sqlite3's
    assert not connection.connection.in_transaction and not connection.in_atomic_block
    assert set(Call.objects.filter(pk__in=[c.pk for c in calls]).values_list("pk", flat=True)) \
        == {calls[0].pk, calls[2].pk}


@sqlite_only
def test_a_batch_interrupted_mid_transaction_leaves_nothing_and_no_transaction(user):
    """An exception between BEGIN and COMMIT (here a parameter sqlite3 cannot bind, raised
    after the first statement ran) rolls the whole batch back."""
    calls = [Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                  user=user) for _ in range(2)]
    items = _items(calls)
    items[1].params[-1] = object()  # the last column: cannot be bound
    connection.ensure_connection()
    with pytest.raises(ProgrammingError):  # Django's, mapped from sqlite3's
        with writer._transaction(connection, "default"):
            writer.executemany(connection, items[0].sql, [items[0].params])
            assert connection.connection.in_transaction
            writer.executemany(connection, items[1].sql, [items[1].params])
    assert not connection.connection.in_transaction
    assert not Call.objects.filter(pk__in=[c.pk for c in calls]).exists()
