"""The log over REST: the key's own user only, newest first, paged with a cursor."""

import hashlib

import pytest
import requests

from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "log me"}]}


def test_list_is_newest_first_and_paged(http, upstream):
    ids = [http.post(f"{http.base}/chat/completions", json=CHAT).headers["X-Call-Id"]
           for _ in range(5)]
    page = http.get(f"{http.base}/calls", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["id"] for c in page["data"]] == ids[::-1][:2]
    rest = http.get(f"{http.base}/calls", params={"limit": 10, "after": page["last_id"]}).json()
    assert [c["id"] for c in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False
    only = http.get(f"{http.base}/calls", params={"operation": "listModels"}).json()
    assert only["data"] == []
    assert http.get(f"{http.base}/calls", params={"limit": 0}).json()["error"]["param"] == "limit"
    assert http.get(f"{http.base}/calls", params={"after": "x"}).json()["error"]["param"] == "after"


def test_detail_has_the_contract_fields(http, upstream):
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    call_id = response.headers["X-Call-Id"]
    detail = http.get(f"{http.base}/calls/{call_id}")
    assert detail.headers["X-Call-Id"] == call_id
    record = detail.json()
    for field in ("id", "object", "operation", "method", "path", "model", "status", "stream",
                  "request", "response", "usage", "latency_ms", "created", "finished_at",
                  "replay_of", "artifacts"):
        assert field in record, field
    assert record["object"] == "call" and record["status"] == "succeeded"
    assert record["request"] == CHAT and record["response"] == response.json()
    assert record["usage"]["total_tokens"] == response.json()["usage"]["total_tokens"]


def test_response_endpoint_returns_the_upstream_body(http, upstream):
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    again = http.get(f"{http.base}/calls/{response.headers['X-Call-Id']}/response")
    assert again.status_code == 200 and again.json() == response.json()

    content = b"line one\nline two\n"
    upload = http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                       files={"file": ("f.jsonl", content)})
    download = http.get(f"{http.base}/files/{upload.json()['id']}/content")
    kept = http.get(f"{http.base}/calls/{download.headers['X-Call-Id']}/response")
    assert kept.content == content

    stream = http.post(f"{http.base}/chat/completions", json={**CHAT, "stream": True})
    replayed = http.get(f"{http.base}/calls/{stream.headers['X-Call-Id']}/response")
    assert replayed.headers["Content-Type"].startswith("text/event-stream")
    assert replayed.content == stream.content


def test_artifacts_are_downloadable_by_their_owner_only(http, upstream, gateway,
                                                        other_api_key):
    content = b"\x89PNG" + b"\x01" * 2000
    response = http.post(f"{http.base}/images/variations", data={"response_format": "b64_json"},
                         files={"image": ("v.png", content, "image/png")})
    call_id = response.headers["X-Call-Id"]
    record = http.get(f"{http.base}/calls/{call_id}").json()
    image = next(a for a in record["artifacts"] if a["role"] == "image")
    assert image["sha256"] == hashlib.sha256(content).hexdigest()
    assert image["bytes"] == len(content) and image["content_type"] == "image/png"
    download = http.get(image["url"])
    assert download.status_code == 200 and download.content == content
    assert "attachment" in download.headers["Content-Disposition"]

    stranger = {"Authorization": f"Bearer {other_api_key}"}
    for url in (f"{gateway}/calls/{call_id}", f"{gateway}/calls/{call_id}/response",
                image["url"]):
        denied = requests.get(url, headers=stranger)
        assert denied.status_code == 404, url
        assert denied.json()["error"]["type"] == "invalid_request_error"
    assert requests.get(f"{gateway}/calls", headers=stranger).json()["data"] == []


def test_unknown_call_is_404(http, upstream):
    assert http.get(f"{http.base}/calls/not-a-uuid").status_code == 404
    assert http.get(
        f"{http.base}/calls/01a21945-077d-7418-9d32-aec1c7b10c63").status_code == 404


def test_every_gateway_response_carries_the_call_id(http, upstream):
    responses = [
        http.post(f"{http.base}/chat/completions", json=CHAT),
        http.post(f"{http.base}/chat/completions", json={"model": "x"}),
        http.get(f"{http.base}/models"),
    ]
    upstream.fault(path="/v1/models", kind="status", status=503)
    responses.append(http.get(f"{http.base}/models"))
    ids = [r.headers.get("X-Call-Id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    assert Call.objects.filter(pk__in=ids).count() == len(ids)
