"""Today's official OpenAI Python SDK, pointed at the gateway with base_url, works unchanged
for every operation it still supports, and every call lands in the log."""

import base64
import io

import pytest

from openai_django.models import Artifact, Call

pytestmark = pytest.mark.django_db(transaction=True)


def last(operation):
    return Call.objects.filter(operation=operation).order_by("-created").first()


def test_chat_and_completions(sdk, upstream):
    chat = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello SDK"}], seed=1)
    assert chat.choices[0].message.content
    call = last("createChatCompletion")
    assert call.status == "succeeded" and call.request_body["seed"] == 1
    assert call.total_tokens == chat.usage.total_tokens

    text = sdk.completions.create(model="text-davinci-003", prompt="Once", max_tokens=5)
    assert text.choices[0].text
    chunks = list(sdk.completions.create(model="text-davinci-003", prompt="Once",
                                         stream=True))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert last("createCompletion").output_text == streamed


def test_tool_calls_round_trip(sdk, upstream):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    first = sdk.chat.completions.create(
        model="gpt-4o-mini", tools=tools,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
    message = first.choices[0].message
    assert message.tool_calls
    second = sdk.chat.completions.create(model="gpt-4o-mini", tools=tools, messages=[
        {"role": "user", "content": "What is the weather in Oslo?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"t": 3}'},
    ])
    assert second.choices[0].message.content
    assert last("createChatCompletion").request_body["messages"][2]["role"] == "tool"


def test_embeddings_default_base64_and_floats(sdk, upstream):
    vectors = sdk.embeddings.create(model="text-embedding-ada-002", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 8
    call = last("createEmbedding")
    assert call.request_body.get("encoding_format") == "base64"
    floats = sdk.embeddings.create(model="text-embedding-ada-002", input="a",
                                   encoding_format="float", dimensions=16)
    assert len(floats.data[0].embedding) == 16


def test_moderations(sdk, upstream):
    result = sdk.moderations.create(input="I like kittens")
    assert result.results[0].flagged in (True, False)
    assert last("createModeration").status == "succeeded"


def test_images(sdk, upstream):
    generated = sdk.images.generate(prompt="a red kite", response_format="b64_json", n=1,
                                    size="256x256")
    raw = base64.b64decode(generated.data[0].b64_json)
    call = last("createImage")
    assert call.artifacts.get(role=Artifact.Role.GENERATED_IMAGE).bytes == len(raw)

    image = ("kite.png", raw, "image/png")
    edited = sdk.images.edit(image=image, mask=("m.png", raw, "image/png"), prompt="add sun",
                             response_format="b64_json")
    assert edited.data[0].b64_json
    roles = set(last("createImageEdit").artifacts.values_list("role", flat=True))
    assert {"image", "mask", "generated_image"} <= roles
    varied = sdk.images.create_variation(image=image, response_format="b64_json")
    assert varied.data[0].b64_json
    assert last("createImageVariation").status == "succeeded"


def test_audio(sdk, upstream):
    audio = ("hello.wav", b"RIFF" + b"\x00" * 4000, "audio/wav")
    transcript = sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert "hello.wav" in transcript.text
    srt = sdk.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
    assert "-->" in srt
    translation = sdk.audio.translations.create(model="whisper-1", file=audio)
    assert translation.text
    assert Call.objects.filter(operation__in=["createTranscription", "createTranslation"],
                               status="succeeded").count() == 3


def test_files(sdk, upstream):
    content = b'{"messages": []}\n' * 10
    created = sdk.files.create(file=("train.jsonl", io.BytesIO(content)), purpose="fine-tune")
    assert created.bytes == len(content)
    assert any(f.id == created.id for f in sdk.files.list())
    assert sdk.files.retrieve(created.id).filename == "train.jsonl"
    assert sdk.files.content(created.id).read() == content
    assert sdk.files.delete(created.id).deleted is True
    ops = set(Call.objects.values_list("operation", flat=True))
    assert {"createFile", "listFiles", "retrieveFile", "downloadFile", "deleteFile"} <= ops


def test_models(sdk, upstream):
    ids = [m.id for m in sdk.models.list()]
    assert "gpt-4o-mini" in ids
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert sdk.models.delete("ft:gpt-4o-mini:acme::x1").deleted is True


def test_sdk_sees_openai_errors(sdk, upstream):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "x",
                                                                  "content": "y"}])
    assert info.value.param == "messages[0].role"
    upstream.fault(path="/v1/chat/completions", kind="status", status=429, retry_after=1)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "y"}])
    bad_key = openai.OpenAI(base_url=sdk.base_url, api_key="sk-od-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
