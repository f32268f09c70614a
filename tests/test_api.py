"""The Python API (``openai_django.create`` / ``submit``) against the stand-in upstream: the
same recording path as HTTP, validated against the spec, errors with the record attached."""

import pytest

import openai_django
from openai_django import tasks
from openai_django.errors import (
    AuthenticationFailed,
    InvalidRequest,
    PayloadTooLarge,
    Unprocessable,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from openai_django.models import APIKey, Call
from openai_django.signals import call_failed, call_finished

MESSAGES = [{"role": "user", "content": "Describe a teapot"}]

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_returns_the_answer_and_the_record(upstream, user):
    result = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                  messages=MESSAGES, user=user)
    assert result.status == 200
    assert 'You said: "Describe a teapot"' in result.data["choices"][0]["message"]["content"]
    data, call = result
    assert data is result.data and call == result.call
    call.refresh_from_db()
    assert (call.status, call.source, call.mode) == ("succeeded", "python", "sync")
    assert call.user == user and call.request_body == {"model": "gpt-4o-mini",
                                                       "messages": MESSAGES}
    assert call.output_text == data["choices"][0]["message"]["content"]
    (sent,) = upstream.requests()
    assert sent["body"] == {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert sent["headers"]["authorization"].endswith("0000")  # the upstream's key, not ours


def test_calls_attached_to_an_object_are_one_query_away(upstream, user, other_user):
    mine = openai_django.create("createEmbedding", model="text-embedding-ada-002",
                                input="teapot", target=user).call
    openai_django.create("createEmbedding", model="text-embedding-ada-002", input="kettle",
                         target=other_user)
    assert list(Call.objects.for_object(user)) == [mine]


def test_invalid_parameters_are_refused_before_anything_is_recorded(upstream):
    with pytest.raises(InvalidRequest) as missing:
        openai_django.create("createChatCompletion", model="gpt-4o-mini")
    assert missing.value.param == "messages" and missing.value.status_code == 400
    with pytest.raises(InvalidRequest) as wrong:
        openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES,
                             temperature="hot")
    assert wrong.value.param == "temperature"
    with pytest.raises(InvalidRequest) as unknown:
        openai_django.submit("createSpaceship", model="x")
    assert unknown.value.param == "operation"
    with pytest.raises(InvalidRequest) as no_path:
        openai_django.create("retrieveModel")
    assert no_path.value.param == "model"
    with pytest.raises(InvalidRequest) as body_on_get:
        openai_django.create("listModels", colour="blue")
    assert body_on_get.value.param == "colour"
    assert Call.objects.count() == 0
    assert upstream.requests() == []


def test_path_and_query_parameters(upstream):
    model = openai_django.create("retrieveModel", model="gpt-4o-mini")
    assert model.data["id"] == "gpt-4o-mini"
    assert model.call.path == "/models/gpt-4o-mini"
    with pytest.raises(UpstreamStatusError) as raised:
        openai_django.create("listFineTuneEvents", fine_tune_id="ft-nope", stream=False)
    assert raised.value.call.query == "stream=false"
    assert upstream.requests()[-1]["query"] == {"stream": "false"}


def test_multipart_operations_take_files(upstream, media_root):
    audio = b"ID3" + bytes(range(256)) * 4
    result = openai_django.create("createTranscription", model="whisper-1",
                                  file=("talk.mp3", audio, "audio/mpeg"))
    assert isinstance(result.data["text"], str) and result.data["text"]
    call = Call.objects.get(pk=result.call.pk)
    stored = call.artifacts.get(role="audio")
    assert stored.bytes == len(audio) and stored.name == "talk.mp3"
    assert upstream.requests()[-1]["form"] == {"model": "whisper-1"}

    text = openai_django.create("createTranscription", files={"file": ("t.mp3", audio)},
                                model="whisper-1", response_format="text")
    assert text.data is None and text.text.strip()


def test_files_over_the_limit_are_refused(upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "MAX_AUDIO_BYTES": 100}
    with pytest.raises(PayloadTooLarge) as raised:
        openai_django.create("createTranscription", model="whisper-1",
                             file=("talk.mp3", b"x" * 101, "audio/mpeg"))
    assert raised.value.param == "file" and raised.value.status_code == 413
    assert Call.objects.count() == 0


def test_upstream_errors_raise_with_the_record(upstream):
    upstream.fault(path="/v1/chat/completions", kind="status", status=400, message="no",
                   times=1)
    with pytest.raises(UpstreamStatusError) as raised:
        openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 400 and raised.value.message == "no"
    assert raised.value.call.status == "failed"
    assert raised.value.body()["error"]["message"] == "no"


def test_an_unreachable_upstream_raises_502_with_the_record(db, settings):
    settings.OPENAI_DJANGO = {"BASE_URL": "http://127.0.0.1:9/v1", "API_KEY": "sk-x"}
    with pytest.raises(UpstreamUnavailable) as raised:
        openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert raised.value.call.outcome == Call.Outcome.UNREACHABLE


def test_stream_yields_chunks_and_finishes_the_record(upstream):
    with openai_django.create("createChatCompletion", model="gpt-4o-mini", messages=MESSAGES,
                              stream=True) as stream:
        chunks = list(stream)
    assert len(chunks) >= 2 and chunks[0]["object"] == "chat.completion.chunk"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices"))
    call = Call.objects.get(pk=stream.call.pk)
    assert call.mode == "stream" and call.status == "succeeded" and call.output_text == text


def test_idempotency_key(upstream, user):
    first = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                 messages=MESSAGES, user=user, idempotency_key="k-1")
    again = openai_django.create("createChatCompletion", model="gpt-4o-mini",
                                 messages=MESSAGES, user=user, idempotency_key="k-1")
    assert again.call.pk == first.call.pk and again.data == first.data
    with pytest.raises(Unprocessable) as raised:
        openai_django.create("createChatCompletion", model="gpt-4o-mini",
                             messages=[{"role": "user", "content": "else"}], user=user,
                             idempotency_key="k-1")
    assert raised.value.status_code == 422
    queued = openai_django.submit("createChatCompletion", model="gpt-4o-mini",
                                  messages=MESSAGES, user=user, idempotency_key="k-2")
    assert openai_django.submit("createChatCompletion", model="gpt-4o-mini",
                                messages=MESSAGES, user=user,
                                idempotency_key="k-2").pk == queued.pk
    assert len(upstream.requests()) == 1
    assert Call.objects.count() == 2


def test_a_raw_site_key_is_accepted_and_a_wrong_one_refused(upstream, user, api_key):
    call = openai_django.create("listModels", api_key=api_key).call
    assert call.api_key == APIKey.objects.get() and call.user == user
    with pytest.raises(AuthenticationFailed):
        openai_django.create("listModels", api_key="sk-od-not-a-key")


def test_signals_are_sent_for_python_calls(upstream):
    seen = []

    def on_finished(sender, call, **kwargs):
        seen.append(("finished", call.pk))

    def on_failed(sender, call, **kwargs):
        seen.append(("failed", call.pk))

    call_finished.connect(on_finished)
    call_failed.connect(on_failed)
    try:
        ok = openai_django.create("listModels").call
        upstream.fault(path="/v1/models", kind="status", status=500, times=1)
        with pytest.raises(UpstreamStatusError) as raised:
            openai_django.create("listModels")
    finally:
        call_finished.disconnect(on_finished)
        call_failed.disconnect(on_failed)
    assert seen == [("finished", ok.pk), ("failed", raised.value.call.pk)]


def test_submit_queues_a_record_that_a_task_performs(upstream, user, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "TASK_QUEUE": "api-tests"}
    call = openai_django.submit("createImage", prompt="A teapot", n=2,
                                response_format="b64_json", user=user, target=user,
                                callback="shop.tasks.image_ready")
    assert (call.status, call.mode, call.source) == ("queued", "async", "python")
    assert call.callback == "shop.tasks.image_ready" and call.payload
    assert upstream.requests() == []
    # What the worker does with the message (the worker tests run it in a real worker).
    assert tasks.perform(call.pk, 1) == "succeeded"
    call.refresh_from_db()
    assert call.artifacts.filter(role="generated_image").count() == 2
    assert call.payload is None


def test_the_admin_inline_lists_an_objects_calls(upstream, user, other_user, rf,
                                                 django_user_model):
    from django.contrib import admin

    from openai_django.inlines import CallInline

    mine = openai_django.create("listModels", target=user).call
    openai_django.create("listModels", target=other_user)
    openai_django.create("listModels")
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root")
    request = rf.get("/")
    request.user = staff
    inline = CallInline(django_user_model, admin.site)
    formset = inline.get_formset(request, user)(instance=user,
                                                queryset=inline.get_queryset(request))
    assert [form.instance.pk for form in formset.forms] == [mine.pk]
    assert not inline.has_add_permission(request, user)
    assert not inline.has_change_permission(request, user)
