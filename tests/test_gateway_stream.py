"""Streams are relayed event by event, and recorded in every ending."""

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "stream": True,
        "messages": [{"role": "user", "content": "Tell me about streams"}]}


def wait_finished(call_id, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call = Call.objects.get(pk=call_id)
        if call.is_finished:
            return call
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} still {call.status} after {timeout}s")


def test_stream_is_relayed_and_recorded(http, upstream):
    upstream.configure(events=6)
    response = http.post(f"{http.base}/chat/completions", json=CHAT, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "Content-Encoding" not in response.headers
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    call = wait_finished(response.headers["X-Call-Id"])
    assert call.stream and call.mode == Call.Mode.STREAM
    assert call.status == Call.Status.SUCCEEDED and call.outcome == Call.Outcome.OK
    assert len(call.stream_events) == len(lines) - 1
    assert [f"data: {e}".encode() for e in call.stream_events] == lines[:-1]
    assert call.output_text and "streams" in call.output_text
    assert call.first_byte_ms is not None and call.latency_ms >= call.first_byte_ms


def test_stream_usage_is_recorded_when_the_upstream_sends_it(http, upstream):
    body = {**CHAT, "stream_options": {"include_usage": True}}
    response = http.post(f"{http.base}/chat/completions", json=body, stream=True)
    list(response.iter_lines())
    call = wait_finished(response.headers["X-Call-Id"])
    assert call.total_tokens and call.total_tokens == call.prompt_tokens + call.completion_tokens
    assert call.cost_usd is not None


def test_event_gaps_are_preserved(http, upstream):
    """Events 150 ms apart upstream arrive about 150 ms apart, not in one lump."""
    upstream.configure(events=5, gap_ms=150, ttft_ms=0)
    response = http.post(f"{http.base}/completions", stream=True, json={
        "model": "text-davinci-003", "prompt": "count", "stream": True})
    arrivals = []
    buffer = b""
    # read1 returns what one socket read brings, whether or not the server uses chunked
    # transfer encoding (iter_content(None) would wait for the end of an unchunked body).
    while chunk := response.raw.read1(65536):
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            arrivals.append((time.monotonic(), event))
    events = [t for t, e in arrivals if e != b"data: [DONE]"]
    assert len(events) == 5
    gaps = [b - a for a, b in zip(events, events[1:])]
    # Generous bounds for a loaded 2-core machine; a buffered relay gives gaps near 0.
    assert all(gap > 0.09 for gap in gaps), gaps
    assert events[-1] - events[0] > 0.45


def test_fine_tune_events_stream(http, upstream):
    upload = http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                       files={"file": ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n')})
    ft = http.post(f"{http.base}/fine-tunes", json={"training_file": upload.json()["id"]}).json()
    response = http.get(f"{http.base}/fine-tunes/{ft['id']}/events?stream=true", stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    call = wait_finished(response.headers["X-Call-Id"])
    assert call.operation == "listFineTuneEvents" and call.stream
    assert call.outcome == Call.Outcome.OK and len(call.stream_events) == len(lines) - 1


def test_stream_without_done_is_marked_incomplete(http, upstream):
    upstream.fault(path="/v1/chat/completions", kind="no_done")
    response = http.post(f"{http.base}/chat/completions", json=CHAT, stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert lines and lines[-1] != b"data: [DONE]"
    call = wait_finished(response.headers["X-Call-Id"])
    assert call.status == Call.Status.FAILED
    assert call.outcome == Call.Outcome.STREAM_INCOMPLETE
    assert call.stream_events and call.output_text


def test_stream_cut_short_is_marked_broken_and_the_client_told(http, upstream):
    upstream.fault(path="/v1/chat/completions", kind="cut", after=2)
    response = http.post(f"{http.base}/chat/completions", json=CHAT, stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert b'"upstream_unreachable"' in lines[-1] or b'"error"' in lines[-1]
    call = wait_finished(response.headers["X-Call-Id"])
    assert call.status == Call.Status.FAILED
    assert call.outcome == Call.Outcome.STREAM_BROKEN
    assert len(call.stream_events) == 2
    assert call.error["type"] == "upstream_error"


def test_client_hanging_up_finishes_the_record(gateway, api_key, upstream):
    """A client that goes away mid-stream leaves a finished record that says so."""
    upstream.configure(events=50, gap_ms=100)
    parts = urlsplit(gateway)
    body = (b'{"model": "gpt-4o-mini", "stream": true, '
            b'"messages": [{"role": "user", "content": "long story"}]}')
    request = (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(request)
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    call_id = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("x-call-id"))
    sock.close()
    call = wait_finished(call_id, timeout=20)
    assert call.status == Call.Status.FAILED
    assert call.outcome == Call.Outcome.CLIENT_DISCONNECTED
    assert 1 <= len(call.stream_events) < 50


def test_stream_error_status_passes_through(http, upstream):
    upstream.fault(path="/v1/chat/completions", kind="status", status=429, retry_after=7)
    response = http.post(f"{http.base}/chat/completions", json=CHAT, stream=True)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"]
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.outcome == Call.Outcome.UPSTREAM_ERROR and call.response_status == 429


def test_sdk_streams(sdk, upstream):
    upstream.configure(events=4)
    chunks = list(sdk.chat.completions.create(stream=True, **{
        k: v for k, v in CHAT.items() if k != "stream"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    call = Call.objects.order_by("-created").first()
    call = wait_finished(call.pk)
    assert call.output_text == text and call.outcome == Call.Outcome.OK


def test_requests_library_sees_a_clean_end(http, upstream):
    response = http.post(f"{http.base}/completions", stream=True, json={
        "model": "text-davinci-003", "prompt": "hi", "stream": True})
    body = response.content
    assert body.endswith(b"data: [DONE]\n\n")
    assert isinstance(response, requests.Response)


def test_a_stream_read_whole_is_recorded_as_a_stream(upstream, user, media_root):
    """A background call (or a replay) of a streamed request has no client to relay to: the
    upstream's events are read whole and still recorded as events, text, tokens and cost."""
    import orjson

    from openai_django import gateway, recorder
    from openai_django.spec import get_registry

    body = {**CHAT, "stream_options": {"include_usage": True}}
    invocation = gateway.Invocation(
        operation=get_registry()["createChatCompletion"], body=body,
        raw_body=orjson.dumps(body), user=user, mode=Call.Mode.ASYNC)
    call = recorder.start(invocation, status=Call.Status.QUEUED, keep_payload=True)
    result = gateway.perform(invocation, call)
    assert result.stream is None
    call.refresh_from_db()
    assert call.stream and call.status == Call.Status.SUCCEEDED
    assert call.stream_events and call.output_text
    assert call.total_tokens and call.cost_usd is not None
    assert call.response_text == ""
