"""Tags, metadata and sessions (headers and keywords), and feedback on calls: through the real
gateway (today's SDK and plain HTTP against the live server and the stand-in upstream), the
Python API (sync and async), a real Celery worker, the REST log, the admin and the export."""

import asyncio
import csv
import io
import json

import pytest
from django.db import connection

import openai_django
from openai_django import tasks
from openai_django.errors import InvalidRequest
from openai_django.models import Call, CallFeedback, CallTag

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

CHAT = "/v1/chat/completions"
LIST = "/admin/openai_django/call/"
MESSAGES = [{"role": "user", "content": "Describe a teapot"}]
LABELS = {"OpenAI-Django-Tags": "Checkout, summary,,CHECKOUT ,beta:2",
          "OpenAI-Django-Metadata": '{"customer": "c_42", "ab": 3, "ratio": 0.5, "beta": true,'
                                    ' "note": null, "city": "Z\\u00fcrich"}',
          "OpenAI-Django-Session": "conv-7f0c3e2a"}


def chat(text="Describe a teapot", **extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def sent_to_upstream(standin, path=CHAT):
    return [r for r in standin.requests() if r["path"] == path]


def assert_never_forwarded(standin):
    seen = sent_to_upstream(standin)
    assert seen, "nothing reached the stand-in"
    for request in seen:
        assert not [n for n in request["header_names"] if n.startswith("openai-django")], \
            request["header_names"]


def tags_index(call):
    return sorted(CallTag.objects.filter(call=call).values_list("tag", flat=True))


def assert_labelled(call):
    assert call.tags == ["checkout", "summary", "beta:2"]
    assert sorted(tags_index(call)) == ["beta:2", "checkout", "summary"]
    assert all(t.created == call.created for t in CallTag.objects.filter(call=call))
    assert call.metadata == {"customer": "c_42", "ab": 3, "ratio": 0.5, "beta": True,
                             "note": None, "city": "Zürich"}
    assert call.session == "conv-7f0c3e2a"
    # Not among the recorded request headers either (what a replay would send again).
    assert not [h for h in call.request_headers if h.startswith("openai-django")]


# -- over HTTP ---------------------------------------------------------------------------


def test_headers_from_todays_sdk_are_recorded_and_never_forwarded(sdk, upstream):
    completion = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=LABELS)
    call = Call.objects.get(pk=completion.headers["x-call-id"])
    assert call.status == Call.Status.SUCCEEDED
    assert_labelled(call)
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                         extra_headers=LABELS)
    chunks = list(stream)
    assert chunks
    streamed = Call.objects.exclude(pk=call.pk).get()
    assert streamed.stream and streamed.status == Call.Status.SUCCEEDED
    assert_labelled(streamed)
    assert len(sent_to_upstream(upstream)) == 2
    assert_never_forwarded(upstream)


def test_not_forwarded_even_when_the_site_lists_them(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "FORWARD_HEADERS": [
        "openai-organization", "openai-django-tags", "openai-django-session"]}
    response = http.post(http.base + "/chat/completions", json=chat(), headers={
        **LABELS, "OpenAI-Organization": "org-forwarded"})
    assert response.status_code == 200, response.text
    assert_never_forwarded(upstream)
    assert sent_to_upstream(upstream)[0]["headers"]["openai-organization"] == "org-forwarded"
    assert_labelled(Call.objects.get(pk=response.headers["X-Call-Id"]))


def test_a_call_without_labels_has_none(http, upstream):
    response = http.post(http.base + "/chat/completions", json=chat())
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert (call.tags, call.metadata, call.session) == ([], None, "")
    assert not CallTag.objects.exists()


BAD = [
    ("OpenAI-Django-Tags", "good, not good"),
    ("OpenAI-Django-Tags", "x" * 65),
    ("OpenAI-Django-Tags", ",".join(f"t{i}" for i in range(21))),
    ("OpenAI-Django-Tags", "caf\u00e9"),
    ("OpenAI-Django-Tags", "a," * 3000),
    ("OpenAI-Django-Metadata", "not json"),
    ("OpenAI-Django-Metadata", "[1, 2]"),
    ("OpenAI-Django-Metadata", '{"nested": {"a": 1}}'),
    ("OpenAI-Django-Metadata", '{"list": [1]}'),
    ("OpenAI-Django-Metadata", '{"a": 1, "a": 2}'),
    ("OpenAI-Django-Metadata", '{"n": NaN}'),
    ("OpenAI-Django-Metadata", json.dumps({"big": "x" * 500, **{f"k{i}": "v" * 400
                                                                for i in range(10)}})),
    ("OpenAI-Django-Metadata", json.dumps({"long": "x" * 513})),
    ("OpenAI-Django-Metadata", json.dumps({"k" * 65: 1})),
    ("OpenAI-Django-Session", "has space"),
    ("OpenAI-Django-Session", "s" * 129),
]


@pytest.mark.parametrize(("header", "value"), BAD)
def test_bad_values_are_refused_and_none_of_them_recorded(http, upstream, header, value):
    good = {k: v for k, v in LABELS.items() if k != header}
    response = http.post(http.base + "/chat/completions", json=chat(),
                         headers={**good, header: value.encode("utf-8")})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == header and error["type"] == "invalid_request_error"
    assert error["code"] in ("invalid_tags", "invalid_metadata", "invalid_session")
    assert sent_to_upstream(upstream) == []
    # Refused like any bad request of a valid key: one finished "rejected" row for the audit
    # log, holding none of the labels (not even the good ones), and no tag rows.
    rejected = Call.objects.get()
    assert rejected.outcome == Call.Outcome.REJECTED and rejected.response_status == 400
    assert (rejected.tags, rejected.metadata, rejected.session) == ([], None, "")
    assert not CallTag.objects.exists()
    assert rejected.error["param"] == header


def test_metadata_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(http, upstream,
                                                                             settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "METADATA_MAX_BYTES": 100}
    base = '{"k": ""}'
    fits = '{"k": "' + "x" * (100 - len(base)) + '"}'
    assert len(fits) == 100
    ok = http.post(http.base + "/chat/completions", json=chat(),
                   headers={"OpenAI-Django-Metadata": fits})
    assert ok.status_code == 200, ok.text
    over = http.post(http.base + "/chat/completions", json=chat(),
                     headers={"OpenAI-Django-Metadata": fits[:-2] + 'x"}'})
    assert over.status_code == 400 and over.json()["error"]["param"] == "OpenAI-Django-Metadata"


# -- the Python API and background calls -------------------------------------------------


def test_python_api_keywords(upstream, user):
    result = openai_django.create(
        "createChatCompletion", model="gpt-4o-mini", messages=MESSAGES, user=user,
        call_tags=["Checkout", "summary", "checkout", "beta:2"],
        call_metadata={"customer": "c_42", "ab": 3, "ratio": 0.5, "beta": True, "note": None,
                       "city": "Zürich"},
        call_session="conv-7f0c3e2a")
    assert_labelled(Call.objects.get(pk=result.call.pk))
    # A body parameter called metadata is still the operation's own, sent upstream.
    stored = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                  messages=MESSAGES, store=True, metadata={"mine": "yes"},
                                  call_tags="a, b")
    call = Call.objects.get(pk=stored.call.pk)
    assert call.tags == ["a", "b"] and call.metadata is None
    assert sent_to_upstream(upstream)[-1]["body"]["metadata"] == {"mine": "yes"}
    assert_never_forwarded(upstream)


def test_python_api_headers_mean_the_same_and_are_not_forwarded(upstream, user):
    result = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                  messages=MESSAGES, user=user, headers=LABELS)
    assert_labelled(Call.objects.get(pk=result.call.pk))
    assert_never_forwarded(upstream)


@pytest.mark.parametrize(("keyword", "value"), [
    ("call_tags", ["ok", "not ok"]), ("call_tags", [1]), ("call_tags", {"a": 1}),
    ("call_metadata", {"a": {"b": 1}}), ("call_metadata", ["a"]),
    ("call_metadata", {"a": float("inf")}), ("call_metadata", {"a": "x" * 5000}),
    ("call_metadata", {"a": 2 ** 70}), ("call_metadata", {1: "a"}),
    ("call_session", "bad id"), ("call_session", ["s"]),
])
def test_python_api_refuses_bad_keywords_before_recording(upstream, user, keyword, value):
    with pytest.raises(InvalidRequest) as caught:
        openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES,
                             user=user, **{keyword: value})
    assert caught.value.param == keyword and caught.value.status_code == 400
    assert not Call.objects.exists() and not CallTag.objects.exists()
    assert sent_to_upstream(upstream) == []


def test_acreate_and_asubmit_keep_the_labels(upstream, user, db_pool):
    from openai_django.transport import close_async_client

    async def main():
        try:
            answer = await openai_django.acreate(
                "createChatCompletion", model="gpt-4o-mini", messages=MESSAGES, user=user,
                call_tags="async", call_session="s-async", call_metadata={"via": "acreate"})
            queued = await openai_django.asubmit(
                "createChatCompletion", model="gpt-4o-mini", messages=MESSAGES, user=user,
                call_tags="async,queued", call_session="s-async")
        finally:
            await close_async_client()
        return answer, queued

    answer, queued = asyncio.run(asyncio.wait_for(main(), 30))
    call = Call.objects.get(pk=answer.call.pk)
    assert (call.tags, call.session, call.metadata) == (["async"], "s-async",
                                                        {"via": "acreate"})
    queued = Call.objects.get(pk=queued.pk)
    assert queued.status == Call.Status.QUEUED
    assert (queued.tags, queued.session) == (["async", "queued"], "s-async")
    assert tags_index(queued) == ["async", "queued"]


@pytest.mark.slow
def test_a_background_call_keeps_its_labels_through_a_real_worker(
        celery_broker, upstream, user, celery_worker_factory):
    from tests.fixtures.celery_worker import wait_for

    call = openai_django.submit("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES,
                                user=user, headers={"OpenAI-Beta": "assistants=v2"},
                                call_tags=["Checkout", "summary", "checkout", "beta:2"],
                                call_metadata={"customer": "c_42", "ab": 3, "ratio": 0.5,
                                               "beta": True, "note": None, "city": "Zürich"},
                                call_session="conv-7f0c3e2a")
    celery_worker_factory()

    def done():
        found = Call.objects.get(pk=call.pk)
        return found if found.is_finished else None

    finished = wait_for(done, 60, message="the background call to finish")
    assert finished.status == Call.Status.SUCCEEDED, finished.error
    assert_labelled(finished)
    assert_never_forwarded(upstream)
    assert sent_to_upstream(upstream)[0]["headers"]["openai-beta"] == "assistants=v2"


def test_a_replay_keeps_tags_and_metadata_not_the_session(upstream, user, other_user):
    result = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                  messages=MESSAGES, user=user, headers=LABELS)
    replay = tasks.replay(result.call.pk, user=other_user)
    replay = Call.objects.get(pk=replay.pk)
    assert replay.replay_of_id == result.call.pk
    assert replay.tags == ["checkout", "summary", "beta:2"]
    assert tags_index(replay) == ["beta:2", "checkout", "summary"]
    assert replay.metadata == result.call.metadata
    assert replay.session == ""


def test_a_tagged_call_and_its_tag_rows_are_written_together(upstream, user):
    """A database that refuses the tag rows (a trigger here) leaves no call either."""
    table = CallTag._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"CREATE TRIGGER od_test_refuse BEFORE INSERT ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, 'refused'); END")
        else:
            cursor.execute("CREATE FUNCTION od_test_refuse() RETURNS trigger AS $$ BEGIN "
                           "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql")
            cursor.execute(f"CREATE TRIGGER od_test_refuse BEFORE INSERT ON {table} "
                           f"FOR EACH ROW EXECUTE FUNCTION od_test_refuse()")
    try:
        with pytest.raises(Exception):  # noqa: B017 (the database's own error, by vendor)
            openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                 messages=MESSAGES, user=user, call_tags="a")
        assert not Call.objects.exists()
        assert sent_to_upstream(upstream) == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER od_test_refuse" +
                           ("" if connection.vendor == "sqlite" else f" ON {table}"))
            if connection.vendor != "sqlite":
                cursor.execute("DROP FUNCTION od_test_refuse()")
    # Untagged calls never open that transaction; tagged ones work again.
    openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES,
                         user=user, call_tags="a")
    assert Call.objects.get().tags == ["a"]


# -- the REST log ------------------------------------------------------------------------


def test_the_rest_log_filters_by_tag_and_session(http, upstream, other_api_key, gateway):
    import requests

    def post(tags, session=None, client=http):
        headers = {"OpenAI-Django-Tags": tags}
        if session:
            headers["OpenAI-Django-Session"] = session
        response = client.post(gateway + "/chat/completions", json=chat(), headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["X-Call-Id"]

    a = post("a", "s1")
    ab = post("a,b", "s1")
    b = post("b", "s2")
    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {other_api_key}"
    post("a", "s1", client=other)  # another user's: never in this user's log

    def ids(**params):
        response = http.get(http.base + "/calls", params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["data"]]

    assert ids(tag="a") == [ab, a]
    assert ids(tag="B") == [b, ab]
    assert ids(tag=["a", "b"]) == [ab]
    assert ids(tag="a,b") == [ab]
    assert ids(session="s1") == [ab, a]
    assert ids(session="s1", tag="b") == [ab]
    assert ids(tag="nothing") == []
    listed = http.get(http.base + "/calls", params={"tag": "b"}).json()["data"][0]
    assert listed["tags"] == ["b"] and listed["session"] == "s2"
    bad = http.get(http.base + "/calls", params={"tag": "not a tag"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tag"
    bad = http.get(http.base + "/calls", params={"session": "not a session"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "session"
    detail = http.get(http.base + f"/calls/{ab}").json()
    assert detail["tags"] == ["a", "b"] and detail["feedback"] is None
    other.close()


# -- feedback ----------------------------------------------------------------------------


def test_feedback_by_the_calls_own_user(http, upstream, other_api_key, gateway):
    import requests

    call_id = http.post(http.base + "/chat/completions", json=chat()).headers["X-Call-Id"]
    url = http.base + f"/calls/{call_id}/feedback"
    assert http.get(url).status_code == 404

    given = http.post(url, json={"score": -0.5, "comment": "Too long"})
    assert given.status_code == 201, given.text
    body = given.json()
    assert body["object"] == "call.feedback" and body["call_id"] == call_id
    assert body["score"] == -0.5 and body["comment"] == "Too long"
    assert given.headers["X-Call-Id"] == call_id

    again = http.post(url, json={"score": 1})  # replaces: one verdict per call
    assert again.status_code == 200 and again.json()["score"] == 1.0
    assert again.json()["comment"] == "" and again.json()["created"] == body["created"]
    feedback = CallFeedback.objects.get()
    assert (feedback.score, feedback.comment) == (1.0, "")
    assert http.get(url).json()["score"] == 1.0
    assert http.get(http.base + f"/calls/{call_id}").json()["feedback"]["score"] == 1.0

    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {other_api_key}"
    for method in ("get", "post", "delete"):
        refused = getattr(other, method)(url, json={"score": -1})
        assert refused.status_code == 404, (method, refused.text)
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert CallFeedback.objects.get().score == 1.0
    other.close()
    assert requests.post(url, json={"score": 1}).status_code == 401

    deleted = http.delete(url)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert not CallFeedback.objects.exists()
    assert http.delete(url).status_code == 404
    unknown = http.post(http.base + "/calls/00000000-0000-7000-8000-000000000000/feedback",
                        json={"score": 1})
    assert unknown.status_code == 404


@pytest.mark.parametrize(("body", "param"), [
    ({"score": 1.5}, "score"), ({"score": -1.01}, "score"), ({"score": "1"}, "score"),
    ({"score": True}, "score"), ({"comment": "no score"}, "score"), ({"score": None}, "score"),
    ({"score": 0, "comment": 5}, "comment"), ({"score": 0, "comment": "x" * 4001}, "comment"),
    ({"score": 0, "rating": 5}, "rating"), ([1], None), ("nope", None),
])
def test_bad_feedback_is_refused_in_the_openai_shape(http, upstream, body, param):
    call_id = http.post(http.base + "/chat/completions", json=chat()).headers["X-Call-Id"]
    response = http.post(http.base + f"/calls/{call_id}/feedback", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert not CallFeedback.objects.exists()


def test_feedback_from_python(upstream, user):
    from openai_django.tagging import record_feedback

    call = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                messages=MESSAGES, user=user).call
    assert record_feedback(call, 0.5, "fine").score == 0.5
    assert record_feedback(call, -1).comment == ""
    with pytest.raises(InvalidRequest) as caught:
        record_feedback(call, 3)
    assert caught.value.param == "score"
    assert CallFeedback.objects.get().score == -1.0


def test_feedback_edges(http, upstream):
    call_id = http.post(http.base + "/chat/completions", json=chat()).headers["X-Call-Id"]
    url = http.base + f"/calls/{call_id}/feedback"
    assert http.post(url, data=b"{", headers={"Content-Type": "application/json"}
                     ).status_code == 400
    assert http.post(url, data=b"", headers={"Content-Type": "application/json"}
                     ).status_code == 400
    assert http.post(url, data=b"score=1", headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    for score in (-1, 0, 1, 0.25):
        assert http.post(url, json={"score": score}).status_code in (200, 201)
    assert CallFeedback.objects.get().score == 0.25


# -- the admin and the export ------------------------------------------------------------


@pytest.fixture
def labelled(http, upstream):
    """Three calls of one session (two tagged), one of another; feedback on two."""
    ids = []
    for text, tags, session in (("First question", "support,en", "conv-1"),
                                ("Second question", "support", "conv-1"),
                                ("Third question", "", "conv-1"),
                                ("Elsewhere", "sales", "conv-2")):
        headers = {"OpenAI-Django-Session": session,
                   "OpenAI-Django-Metadata": '{"customer": "c_42"}'}
        if tags:
            headers["OpenAI-Django-Tags"] = tags
        response = http.post(http.base + "/chat/completions", json=chat(text), headers=headers)
        assert response.status_code == 200, response.text
        ids.append(response.headers["X-Call-Id"])
    assert http.post(http.base + f"/calls/{ids[0]}/feedback",
                     json={"score": -1, "comment": "Wrong answer"}).status_code == 201
    assert http.post(http.base + f"/calls/{ids[3]}/feedback", json={"score": 1}
                     ).status_code == 201
    return ids


def listed(response):
    import re

    assert response.status_code == 200
    return re.findall(r'href="/admin/openai_django/call/([0-9a-f-]{36})/change/',
                      response.content.decode())


def test_admin_list_filters(admin_client, labelled):
    first, second, third, elsewhere = labelled
    assert listed(admin_client.get(LIST, {"tag": "support"})) == [second, first]
    assert listed(admin_client.get(LIST, {"tag": "support,en"})) == [first]
    assert listed(admin_client.get(LIST, {"tag": "SALES"})) == [elsewhere]
    assert listed(admin_client.get(LIST, {"tag": "bad tag"})) == []
    assert listed(admin_client.get(LIST, {"session": "conv-1"})) == [third, second, first]
    assert listed(admin_client.get(LIST, {"feedback": "yes"})) == [elsewhere, first]
    assert listed(admin_client.get(LIST, {"feedback": "negative"})) == [first]
    assert listed(admin_client.get(LIST, {"feedback": "positive"})) == [elsewhere]
    assert listed(admin_client.get(LIST, {"feedback": "comment"})) == [first]
    assert listed(admin_client.get(LIST, {"feedback": "no"})) == [third, second]
    text = admin_client.get(LIST).content.decode()
    assert 'class="od-tag" href="?tag=support"' in text or "?tag=support" in text
    assert "By tag" in text and "By session" in text and "By feedback" in text


def test_admin_call_page_shows_labels_and_feedback(admin_client, labelled):
    text = admin_client.get(f"{LIST}{labelled[0]}/change/").content.decode()
    assert "Labels and feedback" in text
    for expected in ("support", "en", "c_42", "Wrong answer", "-1",
                     f"{LIST}session/conv-1/"):
        assert expected in text, expected


def test_admin_session_page_reads_as_a_conversation(admin_client, labelled):
    response = admin_client.get(f"{LIST}session/conv-1/")
    assert response.status_code == 200
    text = response.content.decode()
    order = [text.index(s) for s in ("First question", "Second question", "Third question")]
    assert order == sorted(order)
    assert "Elsewhere" not in text
    assert text.count("od-message-user") == 3 and text.count("od-message-assistant") == 3
    assert 'You said: "First question"' in text or "First question" in text
    for call_id in labelled[:3]:
        assert f"{LIST}{call_id}/change/" in text
    assert admin_client.get(f"{LIST}session/no-such-session/").status_code == 404


def test_admin_pages_need_staff(client, labelled, django_user_model):
    assert client.get(f"{LIST}session/conv-1/").status_code == 302  # to the login page
    staff = django_user_model.objects.create_user("staff", password="pw-staff-1",
                                                  is_staff=True)
    client.force_login(staff)
    assert client.get(f"{LIST}session/conv-1/").status_code == 403


def test_usage_dashboard_spend_per_tag(admin_client, labelled):
    from decimal import Decimal

    costs = {c.pk: c.cost_usd or Decimal(0) for c in Call.objects.all()}
    first, second, _third, elsewhere = (Call.objects.get(pk=i) for i in labelled)
    response = admin_client.get(f"{LIST}usage/")
    assert response.status_code == 200
    rows = {r["tag"]: r for r in response.context["by_tag"]}
    assert set(rows) == {"support", "en", "sales"}
    assert rows["support"]["calls"] == 2 and rows["en"]["calls"] == 1
    assert rows["support"]["tokens"] == first.total_tokens + second.total_tokens
    assert rows["support"]["cost"] == costs[first.pk] + costs[second.pk]
    assert rows["sales"]["cost"] == costs[elsewhere.pk]
    assert "Per tag" in response.content.decode()


def test_export_has_labels_and_feedback(admin_client, labelled):
    response = admin_client.get(f"{LIST}export/", {"format": "jsonl", "session": "conv-1"})
    assert response.status_code == 200
    records = {r["id"]: r for r in (json.loads(line) for line in
                                    b"".join(response.streaming_content).splitlines())}
    assert set(records) == set(labelled[:3])
    first = records[labelled[0]]
    assert first["tags"] == ["support", "en"] and first["session"] == "conv-1"
    assert first["metadata"] == {"customer": "c_42"}
    assert first["feedback"]["score"] == -1.0 and first["feedback"]["comment"] == "Wrong answer"
    assert records[labelled[2]]["feedback"] is None and records[labelled[2]]["tags"] == []

    response = admin_client.get(f"{LIST}export/", {"format": "csv", "tag": "support"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(r["id"] for r in rows) == sorted(labelled[:2])
    by_id = {r["id"]: r for r in rows}
    # A cell that starts like a formula ("-1") is quoted, as every CSV cell of the export is.
    assert by_id[labelled[0]]["feedback_score"] == "'-1.0"
    assert by_id[labelled[0]]["feedback_comment"] == "Wrong answer"
    assert by_id[labelled[0]]["tags"] == "support,en"
    assert by_id[labelled[0]]["session"] == "conv-1"
    assert json.loads(by_id[labelled[0]]["metadata"]) == {"customer": "c_42"}
    assert by_id[labelled[1]]["feedback_score"] == ""


def test_tag_rows_are_written_on_every_path(upstream, user):
    """The fast paths (PostgreSQL's one statement, SQLite's trigger) and the fallback (a
    transaction of two statements: when the site listens to the model's signals, or a
    database without the trigger) all write the same rows."""
    import importlib

    from django.db.models.signals import pre_save

    def make(tags):
        return openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                    messages=MESSAGES, user=user, call_tags=tags).call

    fast = make("a,b")
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance.pk)

    pre_save.connect(listener, sender=Call)
    try:
        through_orm = make("c")
    finally:
        pre_save.disconnect(listener, sender=Call)
    assert set(seen) == {through_orm.pk}  # its insert and its finish, through the ORM
    assert tags_index(fast) == ["a", "b"] and tags_index(through_orm) == ["c"]
    if connection.vendor == "sqlite":
        trigger = importlib.import_module(
            "openai_django.migrations.0009_calltag_sqlite_trigger")
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER {trigger.TRIGGER}")
        connection.od_tag_trigger = None
        try:
            without_trigger = make("d,e")
            assert tags_index(without_trigger) == ["d", "e"]
        finally:
            from django.apps import apps
            from django.db.migrations.executor import MigrationExecutor

            state = MigrationExecutor(connection).loader.project_state()
            with connection.schema_editor() as editor:
                trigger.create(state.apps if state else apps, editor)
            connection.od_tag_trigger = None
        assert make("f").tags == ["f"] and connection.od_tag_trigger is True
    assert CallTag.objects.count() == 6 if connection.vendor == "sqlite" else 3


@pytest.mark.slow
def test_labels_through_the_asgi_servers(asgi):
    """The async views (uvicorn, granian) read, refuse and strip the headers the same way."""
    import openai

    site, server, standin = asgi
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=site.key, max_retries=0,
                           timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=LABELS)
    row = site.wait_call(raw.headers["x-call-id"],
                         lambda r: r["status"] not in ("queued", "running"))
    assert row["status"] == "succeeded", row
    assert row["tags"] == ["checkout", "summary", "beta:2"]
    assert row["session"] == "conv-7f0c3e2a" and row["metadata"]["city"] == "Zürich"
    listed = site.calls(tag="summary", session="conv-7f0c3e2a")  # the site serves both servers
    assert row["id"] in [c["id"] for c in listed]
    assert all("summary" in c["tags"] for c in listed)
    assert_never_forwarded(standin)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                       extra_headers={"OpenAI-Django-Session": "no good"})
    assert caught.value.body["param"] == "OpenAI-Django-Session"
    assert len(sent_to_upstream(standin)) == 1


def test_session_ids_with_every_allowed_character(admin_client, http, upstream):
    session = "user:42/conv=7+a@b_c.d-e"
    response = http.post(http.base + "/chat/completions", json=chat("Slashes and all"),
                         headers={"OpenAI-Django-Session": session})
    assert response.status_code == 200, response.text
    call_id = response.headers["X-Call-Id"]
    text = admin_client.get(f"{LIST}{call_id}/change/").content.decode()
    from django.urls import reverse

    url = reverse("admin:openai_django_call_session", args=[session])
    assert url in text
    page = admin_client.get(url)
    assert page.status_code == 200 and "Slashes and all" in page.content.decode()
    assert [c["id"] for c in http.get(http.base + "/calls", params={"session": session}
                                      ).json()["data"]] == [call_id]
