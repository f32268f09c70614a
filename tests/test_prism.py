"""The gateway against an independent upstream: Prism (from npm) mocking the bundled spec.

Prism (the session fixture ``prism`` in tests/fixtures/services.py) checks every request it
receives against the spec (a request the gateway mangled gets a 422) and answers bodies made
from the spec's response schemas, so this covers every non-streaming operation with an
upstream this project did not write.
"""


import pytest

from openai_django.models import Call
from openai_django.spec import get_registry

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300

# One valid request per operation: (method, path, json or None, form fields, files).
REQUESTS = {
    "listEngines": ("GET", "/engines", None, None, None),
    "retrieveEngine": ("GET", "/engines/davinci", None, None, None),
    "createCompletion": ("POST", "/completions",
                         {"model": "text-davinci-003", "prompt": "Say this is a test"}, None,
                         None),
    "createChatCompletion": ("POST", "/chat/completions",
                             {"model": "gpt-3.5-turbo",
                              "messages": [{"role": "user", "content": "Hello"}]}, None, None),
    "createEdit": ("POST", "/edits", {"model": "text-davinci-edit-001", "input": "wek",
                                      "instruction": "Fix the spelling"}, None, None),
    "createImage": ("POST", "/images/generations", {"prompt": "an otter", "n": 1,
                                                    "response_format": "b64_json"}, None, None),
    "createImageEdit": ("POST", "/images/edits", None, {"prompt": "a hat", "n": "1"},
                        {"image": ("i.png", PNG, "image/png"),
                         "mask": ("m.png", PNG, "image/png")}),
    "createImageVariation": ("POST", "/images/variations", None, {"n": "1"},
                             {"image": ("i.png", PNG, "image/png")}),
    "createEmbedding": ("POST", "/embeddings", {"model": "text-embedding-ada-002",
                                                "input": "The food was delicious"}, None, None),
    "createTranscription": ("POST", "/audio/transcriptions", None, {"model": "whisper-1"},
                            {"file": ("a.mp3", b"ID3" + b"\x00" * 200, "audio/mpeg")}),
    "createTranslation": ("POST", "/audio/translations", None, {"model": "whisper-1"},
                          {"file": ("a.mp3", b"ID3" + b"\x00" * 200, "audio/mpeg")}),
    "createSearch": ("POST", "/engines/davinci/search",
                     {"query": "the president", "documents": ["White House", "school"]}, None,
                     None),
    "listFiles": ("GET", "/files", None, None, None),
    "createFile": ("POST", "/files", None, {"purpose": "fine-tune"},
                   {"file": ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n',
                             "application/jsonl")}),
    "deleteFile": ("DELETE", "/files/file-abc123", None, None, None),
    "retrieveFile": ("GET", "/files/file-abc123", None, None, None),
    "downloadFile": ("GET", "/files/file-abc123/content", None, None, None),
    "createAnswer": ("POST", "/answers", {
        "model": "curie", "question": "which puppy is happy?",
        "examples": [["What is human life expectancy?", "78 years."]],
        "examples_context": "In 2017, U.S. life expectancy was 78.6 years.",
        "documents": ["Puppy A is happy.", "Puppy B is sad."]}, None, None),
    "createClassification": ("POST", "/classifications", {
        "model": "curie", "query": "It is a raining day :(",
        "examples": [["A happy moment", "Positive"], ["I am sad.", "Negative"]],
        "labels": ["Positive", "Negative"]}, None, None),
    "createFineTune": ("POST", "/fine-tunes", {"training_file": "file-abc123"}, None, None),
    "listFineTunes": ("GET", "/fine-tunes", None, None, None),
    "retrieveFineTune": ("GET", "/fine-tunes/ft-abc123", None, None, None),
    "cancelFineTune": ("POST", "/fine-tunes/ft-abc123/cancel", None, None, None),
    "listFineTuneEvents": ("GET", "/fine-tunes/ft-abc123/events", None, None, None),
    "listModels": ("GET", "/models", None, None, None),
    "retrieveModel": ("GET", "/models/text-davinci-003", None, None, None),
    "deleteModel": ("DELETE", "/models/curie:ft-acmeco-2021", None, None, None),
    "createModeration": ("POST", "/moderations", {"input": "I want to hug you"}, None, None),
}


def test_the_table_covers_every_operation():
    from openai_django.spec import load_document

    legacy = load_document()  # the 1.2.0 document this table is for
    assert set(REQUESTS) == {op["operationId"] for item in legacy["paths"].values()
                             for op in item.values() if isinstance(op, dict)}
    assert set(REQUESTS) <= {op.id for op in get_registry()}


@pytest.mark.parametrize("op_id", sorted(REQUESTS))
def test_operation_through_gateway_to_prism(op_id, prism, live_server, http, settings,
                                            media_root):
    # Prism serves the spec's paths without the servers' /v1: its origin is the base URL.
    settings.OPENAI_DJANGO = {"BASE_URL": prism.url, "API_KEY": "sk-prism-0000"}
    method, path, body, form, files = REQUESTS[op_id]
    url = f"{live_server.url}/v1{path}"
    response = http.request(method, url, json=body, data=form, files=files)
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == op_id
    assert call.status == Call.Status.SUCCEEDED, (call.outcome, call.error)
    assert call.response_status == 200
    if "json" in response.headers.get("Content-Type", ""):
        assert call.response_body == response.json()
