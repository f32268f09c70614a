"""Large request bodies are kept in a row of their own (``RequestBody``), written with the
call's row, and read back through ``call.request_body`` everywhere a body is read: the REST
log, the admin, a replay, retention, deletion. Small bodies stay in the call's row."""

import threading

import orjson
import pytest
from django.db import DatabaseError, IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from openai_django import managers, recorder, retention, writer
from openai_django.models import APIKey, Call, RequestBody

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

LIST = "/admin/openai_django/call/"
SMALL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def large(words=2000, marker="otters"):
    """A chat body over the threshold: a long system prompt, then a short question."""
    text = " ".join(f"{marker} {i}," for i in range(words))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": text},
                                                 {"role": "user", "content": "Say hello"}]}
    assert len(orjson.dumps(body)) > managers.REQUEST_BODY_APART_BYTES
    return body


def call_of(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def column(call_id):
    """The call's ``request_body`` column as stored (``values_list`` skips the attribute)."""
    return Call.objects.filter(pk=call_id).values_list("request_body", flat=True).get()


@pytest.fixture(params=[False, True], ids=["direct", "writer"])
def writer_mode(request, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "WRITER": request.param}
    return request.param


def test_a_large_body_is_kept_apart_and_read_back_whole(http, upstream, writer_mode):
    body = large()
    response = http.post(f"{http.base}/chat/completions", json=body)
    assert response.status_code == 200, response.text
    call = call_of(response)
    assert call.status == Call.Status.SUCCEEDED
    # The row holds the marker; the body's own row holds the JSON text.
    marker = column(call.pk)
    assert managers.is_apart_marker(marker)
    kept = RequestBody.objects.get(call_id=call.pk)
    assert orjson.loads(kept.text) == body
    assert marker[managers.APART_KEY]["bytes"] == len(kept.text.encode())
    # Read as any body is read.
    assert call.request_body == body
    assert call.prompt_preview == "Say hello"
    # Deferred, then read: the column is loaded, then the body behind it.
    deferred = Call.objects.defer("request_body").get(pk=call.pk)
    assert deferred.request_body == body
    # The REST log serves it.
    detail = http.get(f"{http.base}/calls/{call.pk}").json()
    assert detail["request"] == body

    small = call_of(http.post(f"{http.base}/chat/completions", json=SMALL))
    assert column(small.pk) == SMALL and small.request_body == SMALL
    assert not RequestBody.objects.filter(call_id=small.pk).exists()


def test_the_body_is_committed_with_the_row_before_the_upstream_is_asked(http, upstream,
                                                                          writer_mode):
    body, seen = large(), {}
    original = recorder.start

    def start_then_look(invocation, **kwargs):
        call = original(invocation, **kwargs)

        def look():  # another connection: only what is committed
            row = Call.objects.get(pk=call.pk)
            seen["status"], seen["body"] = row.status, row.request_body
            connection.close()

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return call

    recorder.start = start_then_look
    try:
        response = http.post(f"{http.base}/chat/completions", json=body)
    finally:
        recorder.start = original
    assert response.status_code == 200
    assert seen == {"status": Call.Status.RUNNING, "body": body}


def _big_call(user, **extra):
    call = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                user=user, request_body=large(), **extra)
    call.request_bytes = len(orjson.dumps(call.request_body))
    return call


def test_a_failing_insert_leaves_no_body_row(user, writer_mode):
    """The call's row and its body's row are committed together or not at all: a duplicate
    Idempotency-Key fails the call's INSERT, and its body is not left behind."""
    first = _big_call(user, idempotency_key="same", request_hash="h")
    Call.objects.record_new(first)
    duplicate = _big_call(user, idempotency_key="same", request_hash="h")
    with pytest.raises(IntegrityError):
        Call.objects.record_new(duplicate)
    assert RequestBody.objects.filter(call_id=first.pk).exists()
    assert not RequestBody.objects.filter(call_id=duplicate.pk).exists()
    assert not Call.objects.filter(pk=duplicate.pk).exists()
    # The duplicate keeps its body in memory (the marker was only bound).
    assert duplicate.request_body == first.request_body


def test_a_failing_body_row_leaves_no_call_row(user, writer_mode):
    """The other way round: the statement after the call's INSERT fails (here one that
    cannot run), and the call's row is rolled back with it, through the writer or not."""
    call = _big_call(user)
    sql, params = Call.objects._params(connection, "insert", None, call)
    with pytest.raises(DatabaseError):
        Call.objects._execute("default", sql, params, "insert",
                              then=(("INSERT INTO no_such_table VALUES (%s)", [1]),))
    assert not Call.objects.filter(pk=call.pk).exists()
    assert not connection.in_atomic_block
    Call.objects.record_new(call)  # the connection is usable, the same call writes
    assert Call.objects.get(pk=call.pk).request_body == call.request_body


@pytest.mark.skipif(connection.vendor != "sqlite",
                    reason="the batch's own transaction is SQLite's")
def test_a_batch_writes_each_body_with_its_call_and_a_failing_one_only_fails_its_own(user):
    """Several callers' statements in one batch, two of them with a body apart: the bodies
    are written in the batch's transaction; a statement that fails the batch sends the rest
    one by one, each with its own body, and the failed one leaves neither row."""
    Call.objects.record_new(_big_call(user, idempotency_key="same", request_hash="h"))
    calls = [_big_call(user), Call(operation="createChatCompletion", method="POST",
                                   path="/chat/completions", user=user, request_body=SMALL),
             _big_call(user, idempotency_key="same", request_hash="h"), _big_call(user)]

    def item(call):
        sql, params, then = Call.objects.insert_statements(call, connection)
        return writer._Item(sql, params, "insert", then=then)

    connection.ensure_connection()
    batched = writer.Writer("default")
    items = [item(c) for c in calls]
    assert [bool(i.then) for i in items] == [True, False, True, True]
    batched._write_batch(connection, items)
    assert [i.error is None for i in items] == [True, True, False, True]
    assert isinstance(items[2].error, IntegrityError)
    assert not connection.connection.in_transaction
    kept = set(RequestBody.objects.filter(call_id__in=[c.pk for c in calls])
               .values_list("call_id", flat=True))
    assert kept == {calls[0].pk, calls[3].pk}
    for call in (calls[0], calls[3]):
        assert Call.objects.get(pk=call.pk).request_body == call.request_body

    # Without a failure: one transaction, each body after its call.
    fresh = [_big_call(user), _big_call(user)]
    items = [item(c) for c in fresh]
    statements = []
    connection.connection.set_trace_callback(statements.append)
    try:
        batched._write_batch(connection, items)
    finally:
        connection.connection.set_trace_callback(None)
    assert [i.error for i in items] == [None, None]
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert RequestBody.objects.filter(call_id__in=[c.pk for c in fresh]).count() == 2


def test_the_redacted_body_is_what_is_kept_apart(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "REDACT": "openai_django.redaction.redact_pii"}
    body = large(marker="jane.doe@example.com")
    response = http.post(f"{http.base}/chat/completions", json=body)
    assert response.status_code == 200
    call = call_of(response)
    assert managers.is_apart_marker(column(call.pk))
    text = RequestBody.objects.get(call_id=call.pk).text
    assert "jane.doe@example.com" not in text
    assert call.redacted and "jane.doe@example.com" not in orjson.dumps(call.request_body).decode()
    # What was sent upstream is the client's own body.
    assert upstream.requests()[-1]["body"] == body


def test_a_metadata_only_key_keeps_no_body(http, upstream, user):
    _, raw = APIKey.generate(user, name="private", metadata_only=True)
    response = http.post(f"{http.base}/chat/completions", json=large(),
                         headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    call = call_of(response)
    assert call.metadata_only
    assert call.request_body is None and column(call.pk) is None
    assert not RequestBody.objects.filter(call_id=call.pk).exists()


def test_tagged_large_calls_keep_their_tags_and_body(http, upstream):
    body = large()
    response = http.post(f"{http.base}/chat/completions", json=body,
                         headers={"OpenAI-Django-Tags": "long,docs"})
    assert response.status_code == 200
    call = call_of(response)
    assert sorted(call.tag_rows.values_list("tag", flat=True)) == ["docs", "long"]
    assert managers.is_apart_marker(column(call.pk)) and call.request_body == body


def test_retention_and_deletion_take_the_body_row_with_them(http, upstream, settings):
    from datetime import timedelta

    from django.utils import timezone

    old, gone = (call_of(http.post(f"{http.base}/chat/completions", json=large()))
                 for _ in range(2))
    Call.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=31))
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RETENTION": {
        "bodies": 30, "artifacts": None, "metadata": None}}
    report = retention.purge()
    assert report.bodies == 1
    old.refresh_from_db()
    assert old.request_body is None and old.body_purged_at is not None
    assert not RequestBody.objects.filter(call_id=old.pk).exists()
    assert RequestBody.objects.filter(call_id=gone.pk).exists()

    gone.delete()
    assert not RequestBody.objects.filter(call_id=gone.pk).exists()


def test_the_admin_shows_and_replays_a_large_body(admin_client, replayer_client, sdk, upstream,
                                                  eager_celery):
    body = large()
    response = sdk.chat.completions.with_raw_response.create(**body)
    original = Call.objects.get(pk=response.headers["X-Call-Id"])
    page = admin_client.get(f"{LIST}{original.pk}/change/")
    assert page.status_code == 200
    assert "otters 1999," in page.content.decode()  # the system prompt's last words
    raw = admin_client.get(f"{LIST}{original.pk}/request.json")  # the request's download
    assert raw.status_code == 200 and orjson.loads(raw.content) == body

    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": ""})
    replay = original.replays.get()
    assert replay.status == Call.Status.SUCCEEDED
    assert replay.request_body == body and upstream.requests()[-1]["body"] == body
    assert managers.is_apart_marker(column(replay.pk))


def _recorded(user, bodies):
    """Calls recorded (finished, priced by tokens) with these request bodies; their ids."""
    ids = []
    for body in bodies:
        call = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                    user=user, model="gpt-4o-mini", request_body=body,
                    status=Call.Status.SUCCEEDED, prompt_tokens=10, completion_tokens=5,
                    total_tokens=15, response_body={"object": "chat.completion"})
        Call.objects.record_new(call)
        ids.append(call.pk)
    return ids


def test_many_calls_read_their_bodies_apart_in_one_query(user, django_assert_num_queries):
    bodies = [large(marker=f"m{i}") for i in range(4)] + [SMALL, {**SMALL, "n": 2}]
    ids = _recorded(user, bodies)
    calls = Call.objects.filter(pk__in=ids).order_by("created")
    # One by one: a query for each body kept apart.
    with django_assert_num_queries(1 + 4):
        assert [c.request_body for c in calls] == bodies
    # Prefetched: the calls, then the four bodies in one query.
    with django_assert_num_queries(2):
        assert [c.request_body for c in calls.prefetch_related("request_body")] == bodies
    # A page without a body apart makes no second query; a deferred body is not fetched.
    with django_assert_num_queries(1):
        assert [c.request_body for c in calls.filter(pk__in=ids[4:])
                .prefetch_related("request_body")] == bodies[4:]
    with django_assert_num_queries(1):
        list(calls.defer("request_body").prefetch_related("request_body"))
    # In chunks, as the exports read: the calls' query, then one a chunk (3 + 3 calls).
    with django_assert_num_queries(1 + 2):
        assert [c.request_body for c in calls.prefetch_related("request_body")
                .iterator(chunk_size=3)] == bodies
    # A body purged since (its row gone, the marker still read): None, as purged bodies are.
    RequestBody.objects.filter(call_id=ids[0]).delete()
    assert calls.prefetch_related("request_body")[0].request_body is None


def test_the_jsonl_export_and_the_repricing_read_bodies_a_batch_at_a_time(admin_client, user):
    from openai_django import repricing
    from openai_django.admin import costs

    def queries(action):
        with CaptureQueriesContext(connection) as captured:
            action()
        return len(captured)

    def export():
        response = admin_client.get(f"{LIST}export/", {"format": "jsonl"})
        assert response.status_code == 200
        return [orjson.loads(line) for line in b"".join(response.streaming_content).splitlines()]

    ids = _recorded(user, [large(marker="first"), large(marker="second")])
    export()  # the admin's first request reads what it caches (the session, the site)
    few = (queries(export), queries(lambda: repricing.reprice(Call.objects.all())),
           queries(lambda: costs.recompute(Call.objects.all())))
    ids += _recorded(user, [large(marker=f"more{i}") for i in range(6)])
    many = (queries(export), queries(lambda: repricing.reprice(Call.objects.all())),
            queries(lambda: costs.recompute(Call.objects.all())))
    # Four times the calls kept apart, the same number of queries.
    assert many == few
    exported = {line["id"]: line["request"] for line in export()}
    assert {i: exported[str(i)] for i in ids} == {c.pk: c.request_body for c in
                                                  Call.objects.filter(pk__in=ids)}
    assert all(len(orjson.dumps(b)) > managers.REQUEST_BODY_APART_BYTES
               for b in exported.values())


def test_a_bulk_replay_reads_the_bodies_apart_in_one_query(replayer_client, user):
    """The replays are queued (no eager Celery here): what is measured is the admin's loop
    over the selected calls, each replay written with its original's whole body."""
    ids = _recorded(user, [large(marker=f"bulk{i}") for i in range(4)])
    with CaptureQueriesContext(connection) as captured:
        done = replayer_client.post(LIST, {"action": "replay_selected", "post": "yes",
                                           "model": "", "_selected_action": ids}, follow=True)
    assert "4 replays queued" in done.content.decode()
    reads = [q["sql"] for q in captured
             if q["sql"].startswith("SELECT") and "openai_django_requestbody" in q["sql"]]
    assert len(reads) == 1, reads
    for replay in Call.objects.filter(replay_of__in=ids):
        assert replay.request_body == replay.replay_of.request_body
        assert managers.is_apart_marker(column(replay.pk))
