"""The gateway over real HTTP: forwarding, recording, auth and validation."""

import json

import pytest
import requests

from openai_django.models import APIKey, Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to Ada"}]}


def last_call():
    return Call.objects.order_by("-created", "-id").first()


def test_chat_completion_is_forwarded_and_recorded(http, upstream, user):
    raw = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", ' \
          b'"content": "Say hello to Ada"}],' \
          b' "seed": 42, "tools": [{"type": "function", "function": {"name": "f"}}]}'
    response = http.post(f"{http.base}/chat/completions", data=raw,
                         headers={"Content-Type": "application/json",
                                  "OpenAI-Organization": "org-acme"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert "Ada" in body["choices"][0]["message"]["content"]

    # The upstream got the client's fields (unknown ones too), the org header, and the
    # site's upstream key, never the client's key.
    received = upstream.requests()
    assert len(received) == 1
    got = received[0]
    assert got["body"]["seed"] == 42 and got["body"]["tools"][0]["function"]["name"] == "f"
    assert got["headers"]["openai-organization"] == "org-acme"
    assert got["headers"]["authorization"].endswith("0000")

    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.user == user and call.api_key.user == user
    assert call.status == Call.Status.SUCCEEDED and call.outcome == Call.Outcome.OK
    assert call.operation == "createChatCompletion" and call.model == "gpt-4o-mini"
    assert call.request_body == json.loads(raw)
    assert call.response_body == body
    assert call.response_status == 200
    assert call.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert call.total_tokens == body["usage"]["total_tokens"]
    assert call.output_text == body["choices"][0]["message"]["content"]
    assert call.prompt_preview == "Say hello to Ada"
    assert call.upstream_request_id == response.headers["x-request-id"]
    assert call.response_headers["x-request-id"] == response.headers["x-request-id"]
    assert call.request_headers["openai-organization"] == "org-acme"
    assert "authorization" not in call.request_headers
    assert call.latency_ms >= call.upstream_latency_ms > 0
    assert call.finished_at >= call.started_at
    assert call.cost_usd is not None and call.cost_usd > 0


def test_forwarded_bytes_are_what_the_client_sent(http, upstream):
    # Key order, spacing and unicode escapes of the client's body survive the gateway.
    raw = '{"input":"caf\\u00e9","model":"text-moderation-latest"}'
    response = http.post(f"{http.base}/moderations", data=raw,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    got = upstream.requests()[-1]
    assert got["body"] == {"input": "café", "model": "text-moderation-latest"}
    # Same length as sent: a re-serialised copy would have turned \u00e9 into two UTF-8 bytes.
    assert got["body_bytes"] == len(raw.encode())


def test_missing_key_is_401_and_nothing_is_recorded(gateway, upstream):
    response = requests.post(f"{gateway}/chat/completions", json=CHAT)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "API key" in error["message"]
    assert upstream.requests() == []
    assert Call.objects.count() == 0


def test_unknown_and_revoked_keys_are_invalid_api_key(gateway, upstream, user):
    response = requests.post(f"{gateway}/chat/completions", json=CHAT,
                             headers={"Authorization": "Bearer sk-od-not-a-real-key-12345678"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    # The message never echoes the whole key back.
    assert "sk-od-not-a-real-key-12345678" not in response.text

    key, raw = APIKey.generate(user)
    key.revoke()
    response = requests.post(f"{gateway}/chat/completions", json=CHAT,
                             headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert upstream.requests() == []


def test_key_is_stored_only_as_a_hash(http, upstream, api_key):
    http.post(f"{http.base}/chat/completions", json=CHAT)
    key = APIKey.objects.get()
    assert api_key not in (key.hashed_key, key.prefix, key.last4)
    assert key.last_used_at is not None
    call = last_call()
    dumped = json.dumps([call.request_headers, call.request_body, call.response_headers,
                         call.response_body])
    assert api_key not in dumped and "sk-upstream-secret" not in dumped


def test_validation_error_names_the_param_and_reaches_no_upstream(http, upstream):
    bad = {"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "hi"}]}
    response = http.post(f"{http.base}/chat/completions", json=bad)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages[0].role"
    assert upstream.requests() == []
    # The refusal is one finished row, not a half-written one.
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.REJECTED
    assert call.response_status == 400 and call.finished_at is not None
    assert call.error["param"] == "messages[0].role"
    assert not call.artifacts.exists()


@pytest.mark.parametrize("data, content_type, status, fragment", [
    (b"{not json", "application/json", 400, "parse the JSON"),
    (b"", "application/json", 400, "empty"),
    (b"model=gpt", "application/x-www-form-urlencoded", 415, "application/json"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
])
def test_bad_bodies_get_openai_errors(http, upstream, data, content_type, status, fragment):
    response = http.post(f"{http.base}/chat/completions", data=data,
                         headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"]["message"]
    assert upstream.requests() == []


def test_oversized_json_body_is_413(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "MAX_JSON_BYTES": 1000}
    response = http.post(f"{http.base}/embeddings",
                         json={"model": "text-embedding-ada-002", "input": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests() == []


def test_oversized_image_is_413_naming_the_field(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "MAX_IMAGE_BYTES": 2000}
    response = http.post(f"{http.base}/images/variations",
                         files={"image": ("big.png", b"\x89PNG" + b"0" * 5000, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "image"
    assert upstream.requests() == []


def test_multipart_operation_refuses_json(http, upstream):
    # Transcriptions take only a form. (Image edits take JSON too today: gpt-image-1 with
    # image URLs; such a body is forwarded as sent, see test_gateway_input.py.)
    response = http.post(f"{http.base}/audio/transcriptions", json={"model": "whisper-1"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_unknown_path_and_wrong_method_are_json_errors(http, upstream, settings):
    # /responses is served now (today's spec), so a path neither spec knows, with the
    # passthrough off.
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "PASSTHROUGH": "off"}
    response = http.get(f"{http.base}/no-such-endpoint")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    response = http.put(f"{http.base}/models")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_path_parameters_and_get_delete(http, upstream):
    response = http.get(f"{http.base}/models/gpt-4o-mini")
    assert response.status_code == 200 and response.json()["id"] == "gpt-4o-mini"
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == "retrieveModel" and call.model == "gpt-4o-mini"
    assert call.path == "/models/gpt-4o-mini"
    response = http.delete(f"{http.base}/models/ft:gpt-3.5-turbo:acme:custom:abc123")
    assert response.status_code == 200 and response.json()["deleted"] is True
    assert upstream.requests()[-1]["path"] == "/v1/models/ft:gpt-3.5-turbo:acme:custom:abc123"
    assert Call.objects.get(pk=response.headers["X-Call-Id"]).operation == "deleteModel"


def test_deprecated_operations_are_mirrored(http, upstream):
    assert http.get(f"{http.base}/engines").json()["object"] == "list"
    assert http.get(f"{http.base}/engines/davinci").json()["id"] == "davinci"
    search = http.post(f"{http.base}/engines/davinci/search",
                       json={"query": "happy", "documents": ["a", "b"]})
    assert search.status_code == 200, search.text
    call = Call.objects.get(pk=search.headers["X-Call-Id"])
    assert call.operation == "createSearch" and call.model == "davinci"
    answer = http.post(f"{http.base}/answers", json={
        "model": "curie", "question": "which puppy is happy?", "examples": [["q", "a"]],
        "examples_context": "ctx", "documents": ["Puppy A is happy."]})
    assert answer.status_code == 200, answer.text
    classification = http.post(f"{http.base}/classifications", json={
        "model": "curie", "query": "It is a rainy day :(",
        "examples": [["A happy moment", "Positive"], ["I am sad.", "Negative"]],
        "labels": ["Positive", "Negative"]})
    assert classification.status_code == 200, classification.text
    edit = http.post(f"{http.base}/edits", json={
        "model": "text-davinci-edit-001", "input": "What day of the wek is it?",
        "instruction": "Fix the spelling mistakes"})
    assert edit.status_code == 200, edit.text
    assert Call.objects.get(pk=edit.headers["X-Call-Id"]).output_text


def test_spec_is_served(gateway):
    response = requests.get(f"{gateway}/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/yaml")
    assert b"operationId: createChatCompletion" in response.content


def test_fine_tunes(http, upstream):
    upload = http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                       files={"file": ("train.jsonl", b'{"prompt": "a", "completion": "b"}\n')})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    created = http.post(f"{http.base}/fine-tunes", json={"training_file": file_id})
    assert created.status_code == 200, created.text
    ft_id = created.json()["id"]
    assert http.get(f"{http.base}/fine-tunes").json()["object"] == "list"
    assert http.get(f"{http.base}/fine-tunes/{ft_id}").json()["id"] == ft_id
    assert http.get(f"{http.base}/fine-tunes/{ft_id}/events").json()["object"] == "list"
    cancelled = http.post(f"{http.base}/fine-tunes/{ft_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    ops = list(Call.objects.order_by("created").values_list("operation", flat=True))
    assert ops == ["createFile", "createFineTune", "listFineTunes", "retrieveFineTune",
                   "listFineTuneEvents", "cancelFineTune"]
