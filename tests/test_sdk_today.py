"""Today's official SDK (``openai`` 3.x, not a hand-written client) drives every family of the
2.3.0 surface through the gateway against the stand-in; each call's record is looked up by the
``X-Call-Id`` of the very answer the SDK got (``with_raw_response``, or a stream's response)
and checked: succeeded, its operation id, and the family's own fields.
"""

import base64
import io
import json
import time

import pytest

from openai_django.models import Artifact, Call
from openai_django.storage import open_artifact

pytestmark = pytest.mark.django_db(transaction=True)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg==")
WAV = b"RIFF" + (36 + 3200).to_bytes(4, "little") + b"WAVEfmt " + b"\x10\x00\x00\x00" \
    + b"\x01\x00\x01\x00\x80>\x00\x00\x00}\x00\x00\x02\x00\x10\x00data" \
    + (3200).to_bytes(4, "little") + b"\x00" * 3200


def record(raw, operation):
    """The record of the answer ``raw`` (an SDK raw/stream response), checked."""
    call = Call.objects.get(pk=raw.headers["x-call-id"])
    assert call.operation == operation
    assert call.status == Call.Status.SUCCEEDED, (call.outcome, call.error)
    assert 200 <= call.response_status < 300
    return call


def do(method, operation, *args, **kwargs):
    """Call an SDK method through ``with_raw_response``: ``(parsed, record)``."""
    raw = method(*args, **kwargs)
    return raw.parse(), record(raw, operation)


def artifact_bytes(artifact):
    with open_artifact(artifact) as fh:
        return fh.read()


@pytest.fixture
def jobs(upstream):
    """Background jobs (responses, batches, fine-tunes, videos) finish at once; restored."""
    before = upstream.config()["job_seconds"]
    upstream.configure(job_seconds=0)
    yield upstream
    upstream.configure(job_seconds=before)


# -- Responses ------------------------------------------------------------------------------


def test_responses_plain_tools_and_reasoning(sdk, upstream):
    r = sdk.responses.with_raw_response
    resp, call = do(r.create, "createResponse", model="gpt-4o-mini", input="Hello there")
    assert resp.output_text and call.output_text == resp.output_text
    assert call.object_id == resp.id and call.model == "gpt-4o-mini"
    assert call.total_tokens == resp.usage.total_tokens > 0
    assert call.response_body["id"] == resp.id

    tools = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]
    resp, call = do(r.create, "createResponse", model="gpt-4o-mini", tools=tools,
                    input="What is the weather in Oslo?")
    fc = [item for item in resp.output if item.type == "function_call"]
    assert fc and fc[0].name == "get_weather" and json.loads(fc[0].arguments)
    assert call.request_body["tools"][0]["name"] == "get_weather"
    assert call.response_body["output"][0]["type"] == "function_call"

    resp, call = do(r.create, "createResponse", model="o4-mini", input="Think about 2+2",
                    reasoning={"effort": "high", "summary": "auto"})
    assert resp.usage.output_tokens_details.reasoning_tokens > 0
    assert call.reasoning_tokens == resp.usage.output_tokens_details.reasoning_tokens
    assert [item.type for item in resp.output][0] == "reasoning"


def test_responses_stream_records_events_text_and_usage(sdk, upstream):
    first = sdk.responses.create(model="o4-mini", input="Remember the word kite.")
    stream = sdk.responses.create(model="o4-mini", input="Which word?", stream=True,
                                  previous_response_id=first.id,
                                  reasoning={"effort": "low", "summary": "auto"})
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.index("response.output_text.delta") < types.index("response.output_text.done")
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text
    call = record(stream.response, "createResponse")
    assert call.stream and call.output_text == text
    assert len(call.stream_events) == len(events)
    assert call.response_body["id"] == final.id and call.response_body["status"] == "completed"
    usage = final.usage
    assert call.prompt_tokens == usage.input_tokens and call.total_tokens == usage.total_tokens
    assert call.cached_tokens == usage.input_tokens_details.cached_tokens > 0
    assert call.reasoning_tokens == usage.output_tokens_details.reasoning_tokens > 0
    assert call.links.get("previous_response") == first.id


def test_responses_stored_retrieve_items_delete_cancel_compact(sdk, upstream):
    r = sdk.responses.with_raw_response
    created = sdk.responses.create(model="gpt-4o-mini", input="Store me")
    got, call = do(r.retrieve, "getResponse", created.id)
    assert got.id == created.id and call.object_id == created.id
    items, call = do(sdk.responses.input_items.with_raw_response.list, "listInputItems",
                     created.id)
    assert items.data and call.response_body["object"] == "list"
    deleted, call = do(r.delete, "deleteResponse", created.id)
    assert call.response_body["deleted"] is True and call.object_id == created.id

    upstream.configure(job_seconds=30)
    try:
        background = sdk.responses.create(model="gpt-4o-mini", input="Slow", background=True)
        assert background.status in ("queued", "in_progress")
        cancelled, call = do(r.cancel, "cancelResponse", background.id)
        assert cancelled.status == "cancelled" and call.response_body["status"] == "cancelled"
    finally:
        upstream.configure(job_seconds=0.3)

    compacted, call = do(r.compact, "Compactconversation", model="gpt-4o-mini",
                         input=[{"role": "user", "content": "A long talk about kites"}])
    assert call.response_body["object"] == compacted.object
    counted, call = do(sdk.responses.input_tokens.with_raw_response.count,
                       "Getinputtokencounts", model="gpt-4o-mini", input="count me")
    assert counted.input_tokens > 0


def test_conversations(sdk, upstream):
    c = sdk.conversations.with_raw_response
    conv, call = do(c.create, "createConversation", items=[
        {"type": "message", "role": "user", "content": "Hi"}], metadata={"topic": "kites"})
    assert call.object_id == conv.id
    items, call = do(sdk.conversations.items.with_raw_response.create,
                     "createConversationItems", conv.id,
                     items=[{"type": "message", "role": "user", "content": "More"}])
    listed, call = do(sdk.conversations.items.with_raw_response.list, "listConversationItems",
                      conv.id)
    assert len(listed.data) == 2
    resp = sdk.responses.create(model="gpt-4o-mini", input="And now?", conversation=conv.id)
    call = Call.objects.filter(operation="createResponse").latest("created")
    assert call.links.get("conversation") == conv.id and resp.output_text
    got, _ = do(c.retrieve, "getConversation", conv.id)
    assert got.metadata == {"topic": "kites"}
    gone, _ = do(c.delete, "deleteConversation", conv.id)
    assert gone.deleted is True


# -- audio -----------------------------------------------------------------------------------


def test_speech_bytes_and_sse(sdk, upstream, media_root):
    raw = sdk.audio.speech.with_raw_response.create(model="gpt-4o-mini-tts", voice="alloy",
                                                    input="Hello kite", response_format="mp3")
    audio = raw.content
    assert len(audio) > 100
    call = record(raw, "createSpeech")
    artifact = call.artifacts.get(role=Artifact.Role.GENERATED_AUDIO)
    assert artifact.bytes == len(audio) and artifact_bytes(artifact) == audio

    with sdk.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Hello kite",
            stream_format="sse") as streamed:
        text = b"".join(streamed.iter_bytes()).decode()
        call = record(streamed, "createSpeech")
    datas = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert datas[-1]["type"] == "speech.audio.done"
    chunks = b"".join(base64.b64decode(d["audio"]) for d in datas
                      if d["type"] == "speech.audio.delta")
    assert chunks and call.stream
    call.refresh_from_db()
    assert len(call.stream_events) == len(datas)
    assert call.total_tokens == datas[-1]["usage"]["total_tokens"]
    kept = call.artifacts.filter(role=Artifact.Role.GENERATED_AUDIO).first()
    assert kept is not None and artifact_bytes(kept) == chunks


def test_transcription_new_model_json_and_stream(sdk, upstream, media_root):
    t = sdk.audio.transcriptions
    raw = t.with_raw_response.create(model="gpt-4o-transcribe", file=("hello.wav", WAV,
                                                                     "audio/wav"))
    result = raw.parse()
    call = record(raw, "createTranscription")
    assert result.text and call.output_text == result.text
    assert call.total_tokens == result.usage.total_tokens
    kept = call.artifacts.get(role=Artifact.Role.AUDIO)
    assert artifact_bytes(kept) == WAV

    stream = t.create(model="gpt-4o-mini-transcribe", file=("hello.wav", WAV, "audio/wav"),
                      stream=True)
    events = list(stream)
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == events[-1].text
    call = record(stream.response, "createTranscription")
    assert call.stream and call.output_text == events[-1].text
    assert len(call.stream_events) == len(events)


# -- images ----------------------------------------------------------------------------------


def test_gpt_image_generate_and_partial_stream(sdk, upstream, media_root):
    result, call = do(sdk.images.with_raw_response.generate, "createImage",
                      model="gpt-image-1", prompt="a red kite", size="1024x1024")
    raw = base64.b64decode(result.data[0].b64_json)
    assert result.usage.total_tokens == call.total_tokens > 0
    generated = call.artifacts.get(role=Artifact.Role.GENERATED_IMAGE)
    assert artifact_bytes(generated) == raw

    stream = sdk.images.generate(model="gpt-image-1", prompt="a kite", stream=True,
                                 partial_images=2)
    events = list(stream)
    types = [e.type for e in events]
    assert types.count("image_generation.partial_image") == 2
    assert types[-1] == "image_generation.completed"
    call = record(stream.response, "createImage")
    assert call.stream and len(call.stream_events) == len(events)
    final = base64.b64decode(events[-1].b64_json)
    kept = [artifact_bytes(a) for a in call.artifacts.filter(
        role=Artifact.Role.GENERATED_IMAGE)]
    assert final in kept
    assert call.total_tokens == events[-1].usage.total_tokens


def test_gpt_image_edit_keeps_its_input_images(sdk, upstream, media_root):
    other = PNG + b"\x00"
    result, call = do(sdk.images.with_raw_response.edit, "createImageEdit",
                      model="gpt-image-1", prompt="add a sun",
                      image=[("a.png", PNG, "image/png"), ("b.png", other, "image/png")])
    assert result.data[0].b64_json
    inputs = sorted(artifact_bytes(a) for a in call.artifacts.filter(role=Artifact.Role.IMAGE))
    assert inputs == sorted([PNG, other])
    assert call.artifacts.filter(role=Artifact.Role.GENERATED_IMAGE).count() == 1
    assert call.request_body["model"] == "gpt-image-1"


# -- files, batches, fine-tuning, uploads -----------------------------------------------------


def batch_input():
    lines = [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                             "content": f"Hi {n}"}]}}
             for n in range(3)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_batches_with_links_and_output_file(sdk, jobs, media_root):
    content = batch_input()
    file, file_call = do(sdk.files.with_raw_response.create, "createFile",
                         file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    assert file_call.object_id == file.id
    b = sdk.batches.with_raw_response
    batch, call = do(b.create, "createBatch", input_file_id=file.id,
                     endpoint="/v1/chat/completions", completion_window="24h")
    # With no job time the batch may be done at once: the output file is linked then too.
    assert call.object_id == batch.id and call.links["input_file"] == file.id
    about = list(Call.objects.about(file.id))
    assert about and about[0].pk == file_call.pk
    deadline = time.monotonic() + 10
    while batch.status != "completed" and time.monotonic() < deadline:
        batch, call = do(b.retrieve, "retrieveBatch", batch.id)
        time.sleep(0.05)
    assert batch.status == "completed" and batch.output_file_id
    assert call.links["output_file"] == batch.output_file_id
    assert call.links["input_file"] == file.id
    listed, _ = do(b.list, "listBatches")
    assert batch.id in [x.id for x in listed.data]

    raw = sdk.files.with_raw_response.content(batch.output_file_id)
    output = raw.content
    lines = [json.loads(line) for line in output.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    call = record(raw, "downloadFile")
    assert artifact_bytes(call.artifacts.get(role=Artifact.Role.FILE_CONTENT)) == output

    jobs.configure(job_seconds=30)
    slow, _ = do(b.create, "createBatch", input_file_id=file.id,
                 endpoint="/v1/chat/completions", completion_window="24h")
    cancelled, call = do(b.cancel, "cancelBatch", slow.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert call.response_body["status"] == cancelled.status


def test_fine_tuning_jobs_events_and_checkpoints(sdk, jobs, media_root):
    lines = [{"messages": [{"role": "user", "content": f"q{n}"},
                           {"role": "assistant", "content": f"a{n}"}]} for n in range(10)]
    training = sdk.files.create(file=("train.jsonl", io.BytesIO(
        "".join(json.dumps(x) + "\n" for x in lines).encode())), purpose="fine-tune")
    f = sdk.fine_tuning.jobs.with_raw_response
    job, call = do(f.create, "createFineTuningJob", model="gpt-4o-mini-2024-07-18",
                   training_file=training.id, hyperparameters={"n_epochs": 1})
    assert call.object_id == job.id and call.links["training_file"] == training.id
    listed, _ = do(f.list, "listPaginatedFineTuningJobs")
    assert job.id in [x.id for x in listed.data]
    deadline = time.monotonic() + 10
    while job.status not in ("succeeded", "failed") and time.monotonic() < deadline:
        job, call = do(f.retrieve, "retrieveFineTuningJob", job.id)
        time.sleep(0.05)
    assert job.status == "succeeded" and job.fine_tuned_model
    assert call.links["fine_tuned_model"] == job.fine_tuned_model
    assert call.links["result_file_0"] == job.result_files[0]
    events, call = do(f.list_events, "listFineTuningEvents", job.id)
    assert events.data and call.object_id == job.id
    checkpoints, call = do(sdk.fine_tuning.jobs.checkpoints.with_raw_response.list,
                           "listFineTuningJobCheckpoints", job.id)
    assert checkpoints.data and checkpoints.data[0].fine_tuning_job_id == job.id

    jobs.configure(job_seconds=30)
    slow = sdk.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18",
                                       training_file=training.id)
    cancelled, call = do(f.cancel, "cancelFineTuningJob", slow.id)
    assert cancelled.status == "cancelled" and call.object_id == slow.id


def test_uploads_in_parts(sdk, upstream, media_root):
    part1, part2 = b'{"a": 1}\n' * 50, b'{"b": 2}\n' * 30
    u = sdk.uploads.with_raw_response
    upload, call = do(u.create, "createUpload", bytes=len(part1) + len(part2),
                      filename="data.jsonl", mime_type="text/jsonl", purpose="batch")
    assert call.object_id == upload.id
    parts = []
    for chunk in (part1, part2):
        part, call = do(sdk.uploads.parts.with_raw_response.create, "addUploadPart",
                        upload.id, data=chunk)
        kept = call.artifacts.get(role__in=Artifact.INPUT_ROLES)
        assert artifact_bytes(kept) == chunk
        parts.append(part.id)
    done, call = do(u.complete, "completeUpload", upload.id, part_ids=parts)
    assert done.status == "completed" and done.file.bytes == len(part1) + len(part2)
    assert sdk.files.content(done.file.id).read() == part1 + part2


def test_vector_stores(sdk, upstream, media_root):
    file = sdk.files.create(file=("notes.txt", io.BytesIO(b"kites fly high")),
                            purpose="assistants")
    v = sdk.vector_stores.with_raw_response
    store, call = do(v.create, "createVectorStore", name="notes")
    assert call.object_id == store.id
    listed, _ = do(v.list, "listVectorStores")
    assert store.id in [s.id for s in listed.data]
    got, _ = do(v.retrieve, "getVectorStore", store.id)
    assert got.name == "notes"
    vf = sdk.vector_stores.files.with_raw_response
    attached, call = do(vf.create, "createVectorStoreFile", store.id, file_id=file.id)
    assert attached.id == file.id
    files, _ = do(vf.list, "listVectorStoreFiles", store.id)
    assert [x.id for x in files.data] == [file.id]
    gone, call = do(v.delete, "deleteVectorStore", store.id)
    assert gone.deleted is True and call.object_id == store.id


def test_videos_with_content(sdk, jobs, media_root):
    v = sdk.videos.with_raw_response
    video, call = do(v.create, "createVideo", model="sora-2", prompt="a kite over the sea")
    assert call.object_id == video.id
    deadline = time.monotonic() + 10
    while video.status != "completed" and time.monotonic() < deadline:
        video, call = do(v.retrieve, "GetVideo", video.id)
        time.sleep(0.05)
    assert video.status == "completed"
    raw = v.download_content(video.id)
    mp4 = raw.content
    assert mp4[4:8] == b"ftyp"
    call = record(raw, "RetrieveVideoContent")
    assert artifact_bytes(call.artifacts.get(role=Artifact.Role.FILE_CONTENT)) == mp4


def test_container_file_content(sdk, upstream, media_root):
    container = sdk.containers.create(name="work")
    data = b"print('kite')\n"
    file, call = do(sdk.containers.files.with_raw_response.create, "CreateContainerFile",
                    container.id, file=("k.py", data, "text/x-python"))
    # Multipart is the second media type the spec declares here: still kept as an input.
    assert artifact_bytes(call.artifacts.get(role__in=Artifact.INPUT_ROLES)) == data
    raw = sdk.containers.files.content.with_raw_response.retrieve(file.id,
                                                                 container_id=container.id)
    assert raw.content == data
    call = record(raw, "RetrieveContainerFileContent")
    assert artifact_bytes(call.artifacts.get(role=Artifact.Role.FILE_CONTENT)) == data


# -- chat stored completions and the rest -------------------------------------------------------


def test_chat_stored_completions(sdk, upstream):
    c = sdk.chat.completions.with_raw_response
    chat, call = do(c.create, "createChatCompletion", model="gpt-4o-mini", store=True,
                    metadata={"team": "kites"},
                    messages=[{"role": "user", "content": "Hello stored"}])
    assert call.object_id == chat.id and call.output_text == chat.choices[0].message.content
    listed, _ = do(c.list, "listChatCompletions", metadata={"team": "kites"})
    assert chat.id in [x.id for x in listed.data]
    got, call = do(c.retrieve, "getChatCompletion", chat.id)
    assert got.choices[0].message.content == chat.choices[0].message.content
    messages, _ = do(sdk.chat.completions.messages.with_raw_response.list,
                     "getChatCompletionMessages", chat.id)
    assert messages.data[0].content == "Hello stored"
    gone, call = do(c.delete, "deleteChatCompletion", chat.id)
    assert gone.deleted is True and call.object_id == chat.id


def test_models_moderations_embeddings(sdk, upstream):
    models, call = do(sdk.models.with_raw_response.list, "listModels")
    assert "gpt-4o-mini" in [m.id for m in models.data]
    mod, call = do(sdk.moderations.with_raw_response.create, "createModeration",
                   model="omni-moderation-latest", input="I like kites")
    assert call.response_body["results"][0]["flagged"] == mod.results[0].flagged
    emb, call = do(sdk.embeddings.with_raw_response.create, "createEmbedding",
                   model="text-embedding-3-small", input=["a", "b"], dimensions=8)
    assert len(emb.data) == 2 and call.prompt_tokens == emb.usage.prompt_tokens


def test_realtime_client_secret(sdk, upstream):
    secret, call = do(sdk.realtime.client_secrets.with_raw_response.create,
                      "create-realtime-client-secret",
                      session={"type": "realtime", "model": "gpt-realtime"})
    assert secret.value and call.request_body["session"]["model"] == "gpt-realtime"
    assert call.response_body["value"] == secret.value
