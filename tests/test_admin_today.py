"""The admin and today's API (spec 2.3.0): Responses calls read as conversations, speech plays,
gpt-image-1 images show, calls about one upstream object link to each other, and replay and
compare work for Responses. Calls are made through the real gateway (SDK or HTTP -> live
server -> stand-in upstream); pages are rendered by Django's test client as a superuser."""

import ast
import base64
import json
import pathlib
import re

import pytest

ADMIN = pathlib.Path(__file__).resolve().parent.parent / "openai_django" / "admin"


# -- the admin's module graph -------------------------------------------------------------------


def admin_imports(path):
    """The admin modules ``path`` imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "openai_django.admin" or (node.level == 1 and not node.module):
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("openai_django.admin."):
                found.add(node.module.rsplit(".", 1)[1])
            elif node.level == 1:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name.rsplit(".", 1)[1] for a in node.names
                         if a.name.startswith("openai_django.admin."))
    modules = {p.stem for p in ADMIN.glob("*.py")}
    return found & modules - {path.stem}


def test_admin_modules_import_each_other_without_a_circle():
    graph = {p.stem: admin_imports(p) for p in ADMIN.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import circle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "calls" not in graph["replay"] | graph["usage"] | graph["formatting"]


# -- calls made through the gateway -------------------------------------------------------------

LIST = "/admin/openai_django/call/"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQ"
                       "GAhKmMIQAAAABJRU5ErkJggg==")
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def page(client, call):
    response = client.get(f"{LIST}{call.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def recorded(response):
    from openai_django.models import Call

    return Call.objects.get(pk=response.headers["X-Call-Id"])


def respond(http, **body):
    response = http.post(f"{http.base}/responses", json=body)
    assert response.status_code == 200, response.text
    return recorded(response)


def conversation_html(text):
    """The conversation block of a call page (so raw JSON folded below does not count)."""
    start = text.index('class="od-conversation"')
    return text[start:text.index('class="od-section', start)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
class TestResponsesPage:
    def test_a_response_reads_as_a_conversation(self, admin_client, http):
        call = respond(http, model="gpt-4o-mini", instructions="Answer in one line.",
                       tools=[WEATHER], input=[
                           {"role": "user", "content": [
                               {"type": "input_text", "text": "Look <script>alert(1)</script>"},
                               {"type": "input_image", "image_url": DATA_URL}]},
                           {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                            "arguments": '{"city":"Oslo"}'},
                           {"type": "function_call_output", "call_id": "call_1",
                            "output": '{"temp": 3}'},
                           {"role": "user", "content": "And tomorrow?"}])
        text = page(admin_client, call)
        chat = conversation_html(text)
        assert chat.index("Answer in one line.") < chat.index("Look &lt;script&gt;")
        assert "<script>alert(1)" not in text
        assert f'<img src="{DATA_URL}"' in chat  # the safe data URL as a thumbnail
        assert "od-message-tool" in chat and "call_1" in chat and "&quot;temp&quot;: 3" in chat
        assert "&quot;city&quot;: &quot;Oslo&quot;" in chat  # arguments pretty-printed
        assert chat.index("And tomorrow?") < chat.index("od-message-reply")
        assert "You said" in chat.split("od-message-reply", 1)[1]
        assert "1 tool offered" in text and "get_weather" in text
        assert call.object_id.startswith("resp_")
        assert "input tokens" in text and "cached" in text

    def test_reasoning_and_tool_calls_of_the_output(self, admin_client, http):
        call = respond(http, model="o4-mini", reasoning={"effort": "low", "summary": "auto"},
                       tools=[WEATHER], input="What is the weather in Paris?")
        assert call.reasoning_tokens == 64
        text = page(admin_client, call)
        chat = conversation_html(text)
        assert '<details class="od-message od-message-reasoning' in chat
        assert "Thinking it over" in chat
        assert "get_weather" in chat and "&quot;city&quot;" in chat
        assert "(64 reasoning)" in text  # the summary's token line
        assert "64 reasoning" in admin_client.get(LIST).content.decode()  # the list's hint

    def test_a_stream_reads_the_same(self, admin_client, sdk):
        with sdk.responses.with_streaming_response.create(
                model="gpt-4o-mini", input="Stream <b>this</b>", stream=True) as response:
            call = recorded(response)
            for _line in response.iter_lines():
                pass
        call.refresh_from_db()
        assert call.stream_events
        chat = conversation_html(page(admin_client, call))
        assert "Stream &lt;b&gt;this&lt;/b&gt;" in chat and "You said" in chat

    def test_a_broken_stream_shows_what_it_had(self, admin_client, sdk):
        with sdk.responses.with_streaming_response.create(
                model="gpt-4o-mini", input="Stream and break", stream=True) as response:
            call = recorded(response)
            for _line in response.iter_lines():
                pass
        call.refresh_from_db()
        kept = [e for e in call.stream_events if "response.completed" not in e
                and "output_item.done" not in e and "output_text.done" not in e]
        call.response_body, call.stream_events, call.output_text = None, kept, ""
        call.save()
        text = page(admin_client, call)
        assert "The stream ended before the response was complete" in text
        assert "You said" in conversation_html(text)

    def test_get_input_items_and_delete_of_a_response(self, admin_client, http):
        created = respond(http, model="gpt-4o-mini", input="Keep <i>me</i>")
        got = recorded(http.get(f"{http.base}/responses/{created.object_id}"))
        assert got.object_id == created.object_id
        assert "You said" in conversation_html(page(admin_client, got))
        items = recorded(http.get(f"{http.base}/responses/{created.object_id}/input_items"))
        text = page(admin_client, items)
        assert "Keep &lt;i&gt;me&lt;/i&gt;" in text and "<i>me</i>" not in text
        deleted = recorded(http.delete(f"{http.base}/responses/{created.object_id}"))
        text = page(admin_client, deleted)
        assert "deleted" in text
        # Every call about the response links to the others.
        assert text.count(f'href="{LIST}{created.pk}/change/"') == 1
        assert f'href="{LIST}{got.pk}/change/"' in text
        assert "Other calls about this object" in text
        listed = admin_client.get(f"{LIST}?object={created.object_id}").content.decode()
        assert all(str(c.pk) in listed for c in (created, got, items, deleted))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
class TestSpeechAndImages:
    def test_speech_plays_beside_its_text(self, admin_client, sdk):
        response = sdk.audio.speech.with_raw_response.create(
            model="gpt-4o-mini-tts", voice="coral", input="Hello <there>")
        call = recorded(response)
        text = page(admin_client, call)
        audio = call.artifacts.get(role="generated_audio")
        assert audio.content_type.startswith("audio/")
        assert (f'<audio controls preload="metadata" src="{LIST}{call.pk}/artifacts/'
                f'{audio.pk}/?inline=1">') in text
        assert "Hello &lt;there&gt;" in text and "coral" in text
        inline = admin_client.get(f"{LIST}{call.pk}/artifacts/{audio.pk}/?inline=1")
        assert inline.status_code == 200 and "attachment" not in inline["Content-Disposition"]

    def test_gpt_image_1_finals_first_then_partials(self, admin_client, http):
        response = http.post(f"{http.base}/images/generations", json={
            "model": "gpt-image-1", "prompt": "a <b>lighthouse</b>", "n": 1, "stream": True,
            "partial_images": 2})
        assert response.status_code == 200, response.text
        call = recorded(response)
        call.refresh_from_db()
        text = page(admin_client, call)
        assert "a &lt;b&gt;lighthouse&lt;/b&gt;" in text
        images = call.artifacts.filter(role="generated_image")
        final = images.exclude(name__startswith="partial").get()
        assert images.filter(name__startswith="partial").count() == 2
        shown = re.findall(r'artifacts/([0-9a-f-]{36})/\?inline=1" alt="generated', text)
        assert shown[0] == str(final.pk) and len(shown) == 3
        assert "partial partial-0" in text
        assert call.total_tokens  # gpt-image-1 reports usage


# -- links between calls ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
def test_a_batch_links_to_its_input_and_output_files(admin_client, sdk, upstream):
    line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": "hi"}]}})
    upload = sdk.files.with_raw_response.create(file=("in.jsonl", line.encode() + b"\n"),
                                                purpose="batch")
    created_file = recorded(upload)
    batch = sdk.batches.create(input_file_id=created_file.object_id,
                               endpoint="/v1/chat/completions", completion_window="24h")
    upstream.configure(job_seconds=0)
    got = sdk.batches.with_raw_response.retrieve(batch.id)
    retrieved = recorded(got)
    output_file = got.parse().output_file_id
    assert output_file, got.parse()
    download = recorded(sdk.files.with_raw_response.content(output_file))
    retrieved = type(retrieved).objects.get(pk=retrieved.pk)
    assert retrieved.links["input_file"] == created_file.object_id
    text = page(admin_client, retrieved)
    links = text[text.index("Linked objects"):text.index("Other calls about this object")]
    assert f'href="{LIST}{created_file.pk}/change/"' in links and "upload kept" in links
    assert f'href="{LIST}{download.pk}/change/"' in links and "content kept" in links
    assert "Other calls about this object" in text  # the createBatch call


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
def test_a_fine_tuning_job_shows_its_file_events_and_checkpoints(admin_client, sdk, upstream):
    line = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}]})
    created_file = recorded(sdk.files.with_raw_response.create(
        file=("train.jsonl", (line + "\n").encode() * 10), purpose="fine-tune"))
    upstream.configure(job_seconds=0)
    job = recorded(sdk.fine_tuning.jobs.with_raw_response.create(
        model="gpt-4o-mini-2024-07-18", training_file=created_file.object_id))
    text = page(admin_client, job)
    assert "training file" in text and f'href="{LIST}{created_file.pk}/change/"' in text
    events = recorded(sdk.fine_tuning.jobs.with_raw_response.list_events(job.object_id))
    text = page(admin_client, events)
    assert 'class="od-table od-objects"' in text and "message" in text
    checkpoints = recorded(sdk.fine_tuning.jobs.checkpoints.with_raw_response.list(
        job.object_id))
    assert page(admin_client, checkpoints)


# -- replay and compare -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
class TestReplayResponses:
    def test_replay_against_another_model_and_compare(self, admin_client, http, upstream,
                                                     eager_celery):
        original = respond(http, model="gpt-4o-mini", input="Tell me about otters")
        confirm = admin_client.get(f"{LIST}{original.pk}/replay/")
        assert confirm.status_code == 200
        admin_client.post(f"{LIST}{original.pk}/replay/", {"model": "o4-mini"})
        replay = original.replays.get()
        assert replay.status == replay.Status.SUCCEEDED
        assert upstream.requests()[-1]["body"]["model"] == "o4-mini"
        compare = admin_client.get(f"{LIST}{replay.pk}/compare/").content.decode()
        from openai_django.admin import render

        a, b = render.comparable_text(original), render.comparable_text(replay)
        assert "You said" in a and "You said" in b
        assert "% alike" in compare and "otters" in compare
        for label in ("prompt tokens", "cached tokens", "reasoning tokens", "latency",
                      "estimated cost"):
            assert label in compare, label
        assert f"<td>{original.prompt_tokens}</td>" in compare

    def test_edit_and_replay_and_bulk(self, admin_client, http, eager_celery):
        original = respond(http, model="gpt-4o-mini", input="First", instructions="Be brief")
        edit = admin_client.get(f"{LIST}{original.pk}/replay/edit/")
        assert edit.status_code == 200 and "Be brief" in edit.content.decode()
        body = {**original.request_body, "input": "Second <em>try</em>"}
        admin_client.post(f"{LIST}{original.pk}/replay/edit/",
                          {"model": "gpt-4o", "body": json.dumps(body)})
        replay = original.replays.get()
        assert replay.request_body["input"] == "Second <em>try</em>"
        assert "Second &lt;em&gt;try&lt;/em&gt;" in page(admin_client, replay)
        compare = admin_client.get(f"{LIST}{replay.pk}/compare/").content.decode()
        assert "<ins>" in compare and "<em>try" not in compare
        admin_client.post(LIST, {"action": "replay_selected", "_selected_action": [original.pk],
                                 "post": "yes", "model": "o4-mini"})
        assert original.replays.filter(model="o4-mini").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clean_cache")
def test_filters_group_operations_and_filter_by_kind(admin_client, http):
    respond(http, model="gpt-4o-mini", input="kind filter")
    text = admin_client.get(LIST).content.decode()
    assert "od-op-group" in text and "(deprecated)" in text
    assert "Responses" in text and "Fine tuning" in text
    call = respond(http, model="gpt-4o-mini", input="again")
    assert str(call.pk) in admin_client.get(f"{LIST}?kind=responses").content.decode()
    assert str(call.pk) not in admin_client.get(f"{LIST}?kind=chat").content.decode()
