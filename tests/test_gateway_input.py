"""Bad or unusual input reaches the client as a clear OpenAI-style error (never a 500), and is
recorded as a rejected call; bodies that are neither JSON nor a form are forwarded as sent."""

import pytest

from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("messages", [1, True, "hi", {"role": "user"}])
def test_a_wrong_type_is_a_400_recorded_as_rejected(http, upstream, messages):
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o-mini", "messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.outcome == Call.Outcome.REJECTED and call.prompt_preview == ""
    assert upstream.requests() == []


def test_a_content_part_whose_text_is_not_a_string_is_a_400(http, upstream):
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    response = http.post(f"{http.base}/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("messages[0].content")


def test_an_artifact_id_that_is_not_a_uuid_is_a_404(http, upstream):
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": "hi"}]})
    call_id = response.headers["X-Call-Id"]
    response = http.get(f"{http.base}/calls/{call_id}/artifacts/x")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_too_many_form_fields_is_a_400_not_a_500(http, upstream):
    fields = {f"f{i}": "x" for i in range(1001)}
    response = http.post(f"{http.base}/images/variations", data=fields,
                         files={"image": ("i.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64,
                                          "image/png")})
    assert response.status_code == 400, response.text
    assert "multipart body could not be read" in response.json()["error"]["message"]


def test_a_forwarded_header_has_a_bound(http, upstream):
    response = http.post(f"{http.base}/chat/completions",
                         headers={"OpenAI-Organization": "o" * 16384},
                         json={"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "openai-organization"
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    # What is recorded of the header is bounded too.
    assert len(call.request_headers["openai-organization"]) < 100
    assert upstream.requests() == []


def test_a_body_neither_json_nor_form_is_forwarded_as_sent(http, upstream):
    # Realtime calls take an SDP offer (application/sdp): neither JSON nor a form.
    offer = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    response = http.post(f"{http.base}/realtime/calls", data=offer,
                         headers={"Content-Type": "application/sdp"})
    assert response.status_code < 500, response.text
    sent = upstream.requests()[-1]
    assert sent["path"] == "/v1/realtime/calls"
    assert sent.get("body_bytes") == len(offer)
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == "create-realtime-call" or call.path == "/realtime/calls"


def test_a_second_declared_type_is_served_as_that_variant(http, upstream):
    # Image edits declare a form first and JSON second (gpt-image-1 edits by image URL).
    body = {"model": "gpt-image-1", "prompt": "a hat",
            "images": [{"image_url": "https://example.com/cat.png"}]}
    response = http.post(f"{http.base}/images/edits", json=body)
    assert response.status_code != 415, response.text
    sent = upstream.requests()[-1]
    assert sent["path"] == "/v1/images/edits" and sent["body"] == body
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == "createImageEdit" and call.request_body == body


def test_one_user_agent_goes_upstream_naming_the_client_and_the_gateway(http, upstream):
    from openai_django import __version__

    response = http.post(f"{http.base}/chat/completions",
                         headers={"User-Agent": "my-app/1.0"},
                         json={"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    # One header (the stand-in joins repeated ones with ", "), the client's agent first.
    agent = upstream.requests()[-1]["headers"]["user-agent"]
    assert agent == f"my-app/1.0 openai-django/{__version__}"


def test_too_many_file_parts_is_a_400_not_a_500(http, upstream):
    parts = [("image", (f"i{i}.png", b"\x89PNG\r\n\x1a\n" + b"0" * 16, "image/png"))
             for i in range(101)]
    response = http.post(f"{http.base}/images/variations", files=parts)
    assert response.status_code == 400, response.text
    assert "multipart body could not be read" in response.json()["error"]["message"]


def test_rest_downloads_never_run_as_a_page(http, upstream):
    # An upload claiming to be HTML: its download is an attachment that runs nothing.
    response = http.post(f"{http.base}/files", data={"purpose": "assistants"},
                         files={"file": ("x.html", b"<script>alert(1)</script>", "text/html")})
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    artifact = call.artifacts.get(role="upload")
    download = http.get(f"{http.base}/calls/{call.pk}/artifacts/{artifact.pk}")
    assert download.status_code == 200 and download.content == b"<script>alert(1)</script>"
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert download.headers["Content-Disposition"].startswith("attachment")
    recorded = http.get(f"{http.base}/calls/{call.pk}/response")
    assert recorded.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert recorded.headers["X-Content-Type-Options"] == "nosniff"


def test_a_nul_character_is_recorded_not_a_500(http, upstream):
    # PostgreSQL's text and jsonb refuse U+0000 (the fuzzer found 500s there): the call is
    # forwarded as sent and recorded, the NUL kept where the database can (SQLite) and
    # replaced by U+FFFD where it cannot.
    from django.db import connection

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\u0000b"}],
            "user": "x\u0000"}
    response = http.post(f"{http.base}/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert upstream.requests()[-1]["body"] == body
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    kept = "\ufffd" if connection.vendor == "postgresql" else "\u0000"
    assert call.status == Call.Status.SUCCEEDED
    assert call.prompt_preview == f"a{kept}b"
    assert call.request_body["messages"][0]["content"] == f"a{kept}b"
