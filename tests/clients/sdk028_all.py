"""Runs every operation the 2023 OpenAI Python SDK (0.28) supports against a base URL.

Run with the 0.28 SDK's own interpreter: ``python sdk028_all.py BASE_URL KEY``. Prints one
JSON line per operation: {"op": ..., "ok": bool, "detail": ...}. Kept free of the project's
code so it runs in the SDK's separate virtualenv exactly as a 2023 script would.
"""

import io
import json
import sys

import openai

openai.api_base = sys.argv[1]
openai.api_key = sys.argv[2]
openai.organization = "org-legacy"


def report(op, fn):
    try:
        detail = fn()
        print(json.dumps({"op": op, "ok": True, "detail": detail}), flush=True)
    except Exception as exc:
        print(json.dumps({"op": op, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}),
              flush=True)


AUDIO = b"RIFF" + b"\x00" * 2000
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500
state = {}

report("createCompletion", lambda: openai.Completion.create(
    model="text-davinci-003", prompt="Say this is a test", max_tokens=7)["choices"][0]["text"])
report("createCompletion-stream", lambda: "".join(
    c["choices"][0]["text"] for c in openai.Completion.create(
        model="text-davinci-003", prompt="Count", stream=True) if c["choices"]))
report("createChatCompletion", lambda: openai.ChatCompletion.create(
    model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hello legacy"}]
)["choices"][0]["message"]["content"])
report("createChatCompletion-stream", lambda: "".join(
    c["choices"][0]["delta"].get("content", "") for c in openai.ChatCompletion.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}], stream=True)
    if c["choices"]))
report("createEdit", lambda: openai.Edit.create(
    model="text-davinci-edit-001", input="What day of the wek is it?",
    instruction="Fix the spelling mistakes")["choices"][0]["text"])
report("createImage", lambda: len(openai.Image.create(
    prompt="A cute baby sea otter", n=2, size="256x256", response_format="b64_json")["data"]))
report("createImageEdit", lambda: len(openai.Image.create_edit(
    image=io.BytesIO(PNG), mask=io.BytesIO(PNG), prompt="A hat", n=1,
    response_format="b64_json")["data"]))
report("createImageVariation", lambda: len(openai.Image.create_variation(
    image=io.BytesIO(PNG), n=1, response_format="b64_json")["data"]))
report("createEmbedding", lambda: len(openai.Embedding.create(
    model="text-embedding-ada-002", input="The food was delicious")["data"][0]["embedding"]))
report("createModeration", lambda: openai.Moderation.create(
    input="I want to hug you")["results"][0]["flagged"])


def transcribe():
    f = io.BytesIO(AUDIO)
    f.name = "legacy.wav"
    return openai.Audio.transcribe("whisper-1", f)["text"]


def translate():
    f = io.BytesIO(AUDIO)
    f.name = "legacy.wav"
    return openai.Audio.translate("whisper-1", f)["text"]


report("createTranscription", transcribe)
report("createTranslation", translate)


def create_file():
    result = openai.File.create(file=io.BytesIO(b'{"prompt": "a", "completion": "b"}\n'),
                                purpose="fine-tune", user_provided_filename="legacy.jsonl")
    state["file"] = result["id"]
    return result["id"]


report("createFile", create_file)
report("listFiles", lambda: len(openai.File.list()["data"]))
report("retrieveFile", lambda: openai.File.retrieve(state["file"])["id"])
report("downloadFile", lambda: openai.File.download(state["file"]).decode())


def create_fine_tune():
    result = openai.FineTune.create(training_file=state["file"])
    state["ft"] = result["id"]
    return result["id"]


report("createFineTune", create_fine_tune)
report("listFineTunes", lambda: len(openai.FineTune.list()["data"]))
report("retrieveFineTune", lambda: openai.FineTune.retrieve(state["ft"])["id"])
report("listFineTuneEvents", lambda: len(openai.FineTune.list_events(state["ft"])["data"]))
report("cancelFineTune", lambda: openai.FineTune.cancel(state["ft"])["status"])
report("listFineTuneEvents-stream", lambda: sum(
    1 for _ in openai.FineTune.stream_events(state["ft"])))
report("deleteFile", lambda: openai.File.delete(state["file"])["deleted"])
report("listModels", lambda: len(openai.Model.list()["data"]))
report("retrieveModel", lambda: openai.Model.retrieve("text-davinci-003")["id"])
report("deleteModel", lambda: openai.Model.delete("curie:ft-acme-2023-01-01")["deleted"])
report("listEngines", lambda: len(openai.Engine.list()["data"]))
report("retrieveEngine", lambda: openai.Engine.retrieve("davinci")["id"])
# 0.28 no longer has Search, Answer or Classification (removed in 2022 with the endpoints):
# those three are covered over plain HTTP and against Prism instead.
