"""The call list and the call page in the admin, with calls made through the real gateway
(the official SDK against the live server and the stand-in upstream)."""

import base64
import re
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from openai_django.models import APIKey, Artifact, Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

LIST = "/admin/openai_django/call/"
PNG_1x1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEh"
                           "QGAhKmMIQAAAABJRU5ErkJggg==")


def page(call):
    return f"{LIST}{call.pk}/change/"


def rows(response):
    """The call ids on a changelist page, in order."""
    return re.findall(r'href="/admin/openai_django/call/([0-9a-f-]{36})/change/', response.content
                      .decode())


def make_calls(user, count, **fields):
    """Rows written directly, for the list's own behaviour (paging, filters, queries)."""
    now = fields.pop("created", None) or timezone.now()
    defaults = {"operation": "createChatCompletion", "method": "POST",
                "path": "/chat/completions", "model": "gpt-4o-mini",
                "status": Call.Status.SUCCEEDED, "response_status": 200, "total_tokens": 10,
                "cost_usd": "0.000100"}
    calls = [Call(**{**defaults, "user": user, "created": now - timedelta(seconds=i),
                     "prompt_preview": f"seeded prompt {i}", **fields})
             for i in range(count)]
    Call.objects.bulk_create(calls)
    return calls


# -- the list ---------------------------------------------------------------------------------


def test_list_shows_the_columns(admin_client, sdk):
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user",
                                                                "content": "hello list"}])
    list(sdk.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[
        {"role": "user", "content": "streamed"}]))
    response = admin_client.get(LIST)
    assert response.status_code == 200
    text = response.content.decode()
    for expected in ("Chat completion", "gpt-4o-mini", "alice", "sk-od-", "succeeded", "200",
                     " ms", "$0.0000", "hello list", "od-mark-stream"):
        assert expected in text, expected
    assert "Add call" not in text  # read-only


def test_list_queries_do_not_grow_with_rows_or_count_the_table(admin_client, user):
    key, _raw = APIKey.generate(user, name="k")
    make_calls(user, 3, api_key=key)
    admin_client.get(LIST)  # the list of models is read once, then cached
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(LIST).status_code == 200
    make_calls(user, 150, api_key=key)
    with CaptureQueriesContext(connection) as some:
        assert admin_client.get(LIST).status_code == 200
    make_calls(user, 300, api_key=key)
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(LIST)
    assert response.status_code == 200
    assert len(rows(response)) == 100
    assert len(many) == len(some), [q["sql"] for q in many]
    # A list that fits on one page is read once: no count, no second read, no date scans.
    table = Call._meta.db_table
    assert len([q for q in few if f'FROM "{table}"' in q["sql"]]) == 1, [q["sql"] for q in few]
    table = Call._meta.db_table
    for query in many:
        sql = query["sql"]
        if "COUNT(" in sql.upper() and table in sql:
            assert "LIMIT" in sql.upper(), sql  # bounded count, never the whole table


def test_paging_counts_only_a_few_pages_ahead(admin_client, user):
    from openai_django.admin.calls import CallAdmin

    calls = make_calls(user, 450)  # newest first
    before, CallAdmin.paginator.lookahead = CallAdmin.paginator.lookahead, 2
    try:
        first = admin_client.get(LIST + "?model=gpt-4o-mini")
        text = first.content.decode()
        assert "more than 300 calls" in text  # page 1 + 2 pages ahead, then it stops
        assert 'href="?model=gpt-4o-mini&amp;p=3"' in text
        assert "p=4" not in text
        assert rows(first) == [str(c.pk) for c in calls[:100]]
        third = admin_client.get(LIST + "?model=gpt-4o-mini&p=3")
        assert rows(third) == [str(c.pk) for c in calls[200:300]]
        assert "450 calls" in third.content.decode()  # the end is within reach: exact
        assert len(rows(admin_client.get(LIST + "?model=gpt-4o-mini&p=5"))) == 50
        # Past the end, the admin says so (Django's ?e=1).
        assert admin_client.get(LIST + "?model=gpt-4o-mini&p=9").status_code == 302
        # Unfiltered, the total is estimated from the database's statistics.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {Call._meta.db_table}")  # what autovacuum does
        assert re.search(r"about 4\d\d calls", admin_client.get(LIST).content.decode())
    finally:
        CallAdmin.paginator.lookahead = before
    assert "450 calls" in admin_client.get(LIST).content.decode()


def test_filters(admin_client, user, other_user):
    key, _raw = APIKey.generate(user, name="nightly job")
    mine = make_calls(user, 2, api_key=key, model="gpt-4o")
    failed = make_calls(other_user, 1, status=Call.Status.FAILED, outcome=Call.Outcome.TIMEOUT,
                        model="gpt-3.5-turbo")
    embedding = make_calls(other_user, 1, operation="createEmbedding",
                           model="text-embedding-3-small")
    replay = make_calls(user, 1, replay_of=mine[0], source=Call.Source.REPLAY)

    def ids(query):
        response = admin_client.get(LIST + query)
        assert response.status_code == 200, query
        return set(rows(response))

    assert ids("?operation=createEmbedding") == {str(embedding[0].pk)}
    assert ids("?model=gpt-4o") == {str(c.pk) for c in mine}
    assert "text-embedding-3-small" in admin_client.get(LIST).content.decode()  # model choices
    assert ids("?status=failed") == {str(failed[0].pk)}
    assert ids("?error=yes") == {str(failed[0].pk)}
    assert ids("?error=timeout") == {str(failed[0].pk)}
    assert ids("?error=upstream") == set()
    assert str(failed[0].pk) not in ids("?error=no")
    assert ids("?user=bob") == {str(failed[0].pk), str(embedding[0].pk)}
    assert ids(f"?user={user.pk}") == {str(c.pk) for c in mine + replay}
    assert "no such user" in admin_client.get(LIST + "?user=nobody").content.decode()
    assert ids(f"?key={key.pk}") == {str(c.pk) for c in mine}
    assert ids("?key=nightly job") == {str(c.pk) for c in mine}
    assert ids(f"?key={key.masked}") == {str(c.pk) for c in mine}
    assert ids("?replay=yes") == {str(replay[0].pk)}
    assert ids("?replay=replayed") == {str(mine[0].pk)}
    assert str(replay[0].pk) not in ids("?replay=no")
    today = timezone.localdate()
    assert len(ids(f"?created__year={today.year}&created__month={today.month}"
                   f"&created__day={today.day}")) == 5
    # Filters combine with each other and with the date drill-down.
    assert ids(f"?user=alice&replay=yes&created__year={today.year}") == {str(replay[0].pk)}


def test_date_hierarchy_offers_the_span_of_the_data(admin_client, user):
    now = timezone.now()
    make_calls(user, 1, created=now - timedelta(days=400))
    make_calls(user, 1, created=now)
    text = admin_client.get(LIST).content.decode()
    assert f"created__year={now.year}" in text
    assert f"created__year={(now - timedelta(days=400)).year}" in text


def test_search_by_id_request_id_and_prompt(admin_client, sdk):
    first = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "Where is the blue whale?"}])
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "Something else entirely"}])
    call = Call.objects.get(pk=first.headers["X-Call-Id"])
    assert call.upstream_request_id

    def ids(term):
        return set(rows(admin_client.get(LIST, {"q": term})))

    assert ids(str(call.pk)) == {str(call.pk)}
    assert ids(call.upstream_request_id) == {str(call.pk)}
    assert ids("BLUE WHALE") == {str(call.pk)}
    assert ids("no such words") == set()


def test_list_escapes_stored_text(admin_client, user):
    make_calls(user, 1, prompt_preview="<script>alert('list')</script>")
    text = admin_client.get(LIST).content.decode()
    assert "<script>alert('list')" not in text
    assert "&lt;script&gt;alert(" in text


# -- the call page ----------------------------------------------------------------------------


def test_chat_page_reads_as_a_conversation(admin_client, sdk):
    response = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris? <script>alert('x')</script>"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ], tools=[{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    text = admin_client.get(page(call)).content.decode()
    assert "od-conversation" in text
    for role in ("system", "user", "assistant", "tool"):
        assert f"od-message-{role}" in text, role
    assert "get_weather" in text and "&quot;city&quot;: &quot;Paris&quot;" in text
    assert "call_1" in text and "1 tool offered" in text
    assert "<script>alert('x')</script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "od-message-reply" in text  # the answer
    assert "Request body (JSON)" in text and "Response body (JSON)" in text
    assert "Replay…" in text and "Edit and replay…" in text


def test_streamed_chat_shows_the_assembled_answer(admin_client, sdk):
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[
        {"role": "user", "content": "stream this"}]))
    text_sent = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    call = Call.objects.get(stream=True)
    text = admin_client.get(page(call)).content.decode()
    assert "od-message-reply" in text
    assert text_sent.split()[0] in text
    assert "events</summary>" in text  # the events, folded


def test_completion_page_shows_prompt_and_text(admin_client, sdk):
    answer = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    call = Call.objects.get(operation="createCompletion")
    text = admin_client.get(page(call)).content.decode()
    assert "Say this is a test" in text and answer.choices[0].text.split()[0] in text


def test_image_page_shows_thumbnails_linking_to_the_files(admin_client, sdk):
    sdk.images.generate(prompt="a red fox", n=2, size="256x256", response_format="b64_json")
    call = Call.objects.get(operation="createImage")
    text = admin_client.get(page(call)).content.decode()
    images = call.artifacts.filter(role=Artifact.Role.GENERATED_IMAGE)
    assert images.count() == 2
    for artifact in images:
        url = f"{LIST}{call.pk}/artifacts/{artifact.pk}/?inline=1"
        assert f'<img src="{url}"' in text
        full = admin_client.get(url)
        assert full.status_code == 200 and full["Content-Type"] == "image/png"
        assert full["X-Content-Type-Options"] == "nosniff"
        assert "inline" in full["Content-Disposition"]
        assert b"".join(full.streaming_content).startswith(b"\x89PNG")
        attachment = admin_client.get(f"{LIST}{call.pk}/artifacts/{artifact.pk}/")
        assert attachment["Content-Disposition"].startswith("attachment")
    assert "<{" not in text and "base64 characters" not in text.split("Raw")[0]
    assert "a red fox" in text
    assert f"{images[0].sha256[:16]}" in text  # artifacts table


def test_image_edit_page_shows_the_input_image(admin_client, sdk):
    sdk.images.edit(image=("in.png", PNG_1x1, "image/png"), prompt="make it blue",
                    response_format="b64_json")
    call = Call.objects.get(operation="createImageEdit")
    text = admin_client.get(page(call)).content.decode()
    assert "Input images" in text
    source = call.artifacts.get(role=Artifact.Role.IMAGE)
    assert f"{LIST}{call.pk}/artifacts/{source.pk}/?inline=1" in text


def test_unsafe_artifacts_are_never_served_inline(admin_client, sdk):
    sdk.files.create(file=("page.html", b"<script>alert(1)</script>"), purpose="fine-tune")
    call = Call.objects.get(operation="createFile")
    upload = call.artifacts.get()
    response = admin_client.get(f"{LIST}{call.pk}/artifacts/{upload.pk}/?inline=1")
    assert response["Content-Disposition"].startswith("attachment")
    assert "sandbox" in response["Content-Security-Policy"]


def test_audio_page_has_a_player_beside_the_transcript(admin_client, sdk):
    result = sdk.audio.transcriptions.create(model="whisper-1",
                                             file=("talk.mp3", b"ID3" + bytes(500), "audio/mpeg"))
    call = Call.objects.get(operation="createTranscription")
    text = admin_client.get(page(call)).content.decode()
    audio = call.artifacts.get(role=Artifact.Role.AUDIO)
    player = f'<audio controls preload="metadata" src="{LIST}{call.pk}/artifacts/{audio.pk}/'
    assert player + '?inline=1"' in text
    assert result.text[:40] in text


def test_embedding_page_summarises_vectors(admin_client, sdk, upstream):
    sdk.embeddings.create(model="text-embedding-ada-002", input=["one", "two"])
    sdk.embeddings.with_raw_response.create(model="text-embedding-ada-002", input="floats",
                                            encoding_format="float")
    for call in Call.objects.filter(operation="createEmbedding"):
        text = admin_client.get(page(call)).content.decode()
        assert "Vectors" in text
        dims = re.findall(r'<td class="num">(\d+)</td><td class="od-mono">', text)
        assert dims and all(int(d) > 8 for d in dims)
        # Never the whole vector: at most a few numbers per row, raw JSON included.
        numbers = re.findall(r"-?\d+\.\d{4,}", text)
        assert len(numbers) < 8 * 2 * 3 + 10, len(numbers)


def test_moderation_and_tables(admin_client, sdk):
    sdk.moderations.create(input="I want to hurt them")
    upload = sdk.files.create(file=("train.jsonl", b'{"prompt": "a", "completion": "b"}\n'),
                              purpose="fine-tune")
    sdk.files.list()
    sdk.files.retrieve(upload.id)
    sdk.models.list()
    moderation = Call.objects.get(operation="createModeration")
    text = admin_client.get(page(moderation)).content.decode()
    assert "flagged" in text and "violence" in text
    listing = Call.objects.get(operation="listFiles")
    text = admin_client.get(page(listing)).content.decode()
    assert re.search(r"\d+ files?<", text) and upload.id in text and "<th>filename</th>" in text
    detail = Call.objects.get(operation="retrieveFile")
    text = admin_client.get(page(detail)).content.decode()
    assert "od-object" in text and "train.jsonl" in text
    models = Call.objects.get(operation="listModels")
    assert "models<" in admin_client.get(page(models)).content.decode()
    assert "Edit and replay" not in admin_client.get(page(models)).content.decode()


def test_flags_replay_links_and_errors(admin_client, user):
    original, = make_calls(user, 1)
    replay, = make_calls(user, 1, replay_of=original, source=Call.Source.REPLAY)
    purged, = make_calls(user, 1, body_purged_at=timezone.now() - timedelta(days=2),
                         redacted=True)
    meta, = make_calls(user, 1, metadata_only=True)
    failed, = make_calls(user, 1, status=Call.Status.FAILED, outcome=Call.Outcome.UPSTREAM_ERROR,
                         error={"message": "Rate limit <b>reached</b>", "type": "requests"})
    text = admin_client.get(page(replay)).content.decode()
    assert "Replay of" in text and f"{LIST}{original.pk}/change/" in text
    assert "Compare with original" in text
    text = admin_client.get(page(original)).content.decode()
    assert f"{LIST}{replay.pk}/change/" in text and "Replays" in text
    text = admin_client.get(page(purged)).content.decode()
    day = (timezone.now() - timedelta(days=2)).strftime("%Y-%m-%d")
    assert f"Body purged on {day}" in text and "Redacted" in text
    assert "Metadata only" in admin_client.get(page(meta)).content.decode()
    text = admin_client.get(page(failed)).content.decode()
    assert "Rate limit &lt;b&gt;reached&lt;/b&gt;" in text


def test_downloads_of_request_and_response(admin_client, sdk):
    response = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "download me"}])
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    request = admin_client.get(f"{LIST}{call.pk}/request.json")
    assert request["Content-Disposition"].startswith("attachment")
    assert request.json()["messages"][0]["content"] == "download me"
    answer = admin_client.get(f"{LIST}{call.pk}/response/")
    assert answer["Content-Disposition"].startswith("attachment")
    assert answer.json() == response.http_response.json()


def test_the_log_is_read_only_and_needs_view_permission(client, viewer_client, user):
    call, = make_calls(user, 1)
    assert viewer_client.get(page(call)).status_code == 200
    assert viewer_client.get(LIST).status_code == 200
    assert "Replay…" not in viewer_client.get(page(call)).content.decode()
    assert viewer_client.post(f"{LIST}{call.pk}/delete/").status_code == 403
    assert viewer_client.get(f"{LIST}add/").status_code == 403
    client.logout()
    assert client.get(page(call)).status_code == 302  # to the login page
    assert client.get(f"{LIST}usage/").status_code == 302
    assert viewer_client.get(f"{LIST}{uuid.uuid4()}/change/").status_code == 302  # gone
