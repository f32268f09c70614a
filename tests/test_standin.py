"""Tests of the stand-in OpenAI upstream itself, over real HTTP.

Run with ``python -m pytest tests/test_standin.py -p no:django``: nothing here needs Django.
Every server is started through ``StandinServer`` (a child process) and stopped by the fixture
or ``with`` block that started it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from openai_django.testing import StandinError, StandinServer

pytestmark = pytest.mark.once  # no database or storage of the run's own

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": "Bearer sk-test-abcd1234"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with StandinServer(tls=True) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean_state(request):
    """Each test starts with no queued faults, an empty log and the starting knobs."""
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv.clear_faults()
        srv.clear_requests()
        srv.configure(ttft_ms=0, gap_ms=0, events=8, embedding_dimensions=1536,
                      image_base_url=None)
    yield


@pytest.fixture()
def http():
    with requests.Session() as session:
        session.trust_env = False  # never route loopback traffic through an env proxy
        session.headers.update(AUTH)
        yield session


def post(http, server, path, **kwargs):
    return http.post(server.url + path, timeout=10, **kwargs)


def get(http, server, path, **kwargs):
    return http.get(server.url + path, timeout=10, **kwargs)


def sse(resp):
    """Yield (arrival time, payload) for each ``data:`` event of a streamed response."""
    buf = ""
    for chunk in resp.iter_content(chunk_size=None):
        now = time.perf_counter()
        buf += chunk.decode()
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            for line in block.splitlines():
                if line.startswith("data: "):
                    yield now, line[len("data: "):]


def chat_body(text="What is the capital of France?", **extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def multipart_file(name="blob.bin", size=1000, seed=b"x"):
    data = hashlib.shake_256(seed).digest(size)
    return name, data


# -- process, CLI, health --------------------------------------------------------------------------


def test_cli_prints_ready_line_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "openai_django.testing.upstream", "--host",
                             "127.0.0.1", "--port", "0", "--events", "3", "--fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode().strip()
        match = re.fullmatch(r"READY http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        resp = requests.get(f"http://127.0.0.1:{port}/_control/health", timeout=5)
        assert resp.json()["status"] == "ok" and resp.json()["fast"] is True
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()


def test_server_object_urls_and_health(server):
    assert server.running and server.health()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.url)
    assert server.base + "/v1" == server.url
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/v1", server.tls_url)
    assert server.ca_file and Path(server.ca_file).exists()
    assert server.config()["image_base_url"] == server.tls_base


def test_stop_terminates_only_its_own_process():
    srv = StandinServer(fast=True).start()
    pid = srv.pid
    srv.stop()
    assert not srv.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(TypeError):
        StandinServer(no_such_knob=1)


# -- auth, routing, headers ----------------------------------------------------------------------


def test_missing_or_empty_bearer_is_401(server):
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        resp = requests.get(server.url + "/models", headers=headers, timeout=5)
        assert resp.status_code == 401
        err = resp.json()["error"]
        assert err["code"] == "invalid_api_key"
        assert set(err) == {"message", "type", "param", "code"}


def test_api_key_option_accepts_only_that_key():
    with StandinServer(api_key="sk-right-key", fast=True) as srv:
        bad = requests.get(srv.url + "/models", headers={"Authorization": "Bearer sk-wrong"},
                           timeout=5)
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "invalid_api_key"
        good = requests.get(srv.url + "/models",
                            headers={"Authorization": "Bearer sk-right-key"}, timeout=5)
        assert good.status_code == 200


def test_unknown_path_and_wrong_method_are_404_in_error_shape(server, http):
    for resp in (get(http, server, "/nope"), http.put(server.url + "/chat/completions"),
                 http.get(server.base + "/elsewhere")):
        assert resp.status_code == 404
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"


def test_invalid_json_is_400(server, http):
    resp = post(http, server, "/chat/completions", data=b"{not json",
                headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert "JSON" in resp.json()["error"]["message"]


def test_response_headers_look_like_the_real_api(server, http):
    first = post(http, server, "/chat/completions", json=chat_body())
    second = post(http, server, "/chat/completions", json=chat_body())
    for resp in (first, second):
        h = resp.headers
        assert h["openai-version"] == "2020-10-01"
        assert h["openai-model"] == "gpt-4o-mini"
        assert int(h["openai-processing-ms"]) >= 0
        assert h["x-request-id"].startswith("req_")
        assert int(h["x-ratelimit-limit-requests"]) >= int(h["x-ratelimit-remaining-requests"])
        assert h["x-ratelimit-reset-requests"].endswith("s")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# -- chat ------------------------------------------------------------------------------------------


def test_chat_completion_is_spec_shaped_and_deterministic(server, http):
    a = post(http, server, "/chat/completions", json=chat_body()).json()
    b = post(http, server, "/chat/completions", json=chat_body()).json()
    c = post(http, server, "/chat/completions",
             json=chat_body("A much longer question about the history of the Roman empire "
                            "and its roads")).json()
    assert a["id"].startswith("chatcmpl-") and a["id"] != b["id"]
    assert a["object"] == "chat.completion" and isinstance(a["created"], int)
    assert a["model"] == "gpt-4o-mini"
    msg = a["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert 'You said: "What is the capital of France?"' in msg["content"]
    assert msg["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["finish_reason"] == "stop"
    usage = a["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert c["usage"]["prompt_tokens"] > usage["prompt_tokens"]


def test_chat_accepts_todays_message_shapes(server, http):
    body = {"model": "gpt-4o", "n": 2, "max_completion_tokens": 5, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Really brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe this image"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "function_call": {"name": "f",
                                                                 "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "{}"},
        {"role": "user", "content": "Now answer in one line please"},
    ]}
    resp = post(http, server, "/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    for choice in data["choices"]:
        assert choice["finish_reason"] == "length"
        assert len(choice["message"]["content"].split()) == 5
    assert post(http, server, "/chat/completions", json={"model": "x"}).status_code == 400


def test_chat_counts_only_well_formed_tool_calls(server, http):
    """Tool calls of any other shape are not counted, and never fail the request (found by
    the fuzzer: a number where a call's ``function`` goes was a 500)."""
    well = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f",
                                                          "arguments": '{"a": 1}'}}]}
    odd = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": 5.6e201}, 3.0, None]}
    odder = {"role": "assistant", "content": None, "tool_calls": 7}
    tokens = {}
    for name, message in ("none", None), ("well", well), ("odd", odd), ("odder", odder):
        messages = [{"role": "user", "content": "Hello there"}]
        if message is not None:
            messages.append(message)
        resp = post(http, server, "/chat/completions",
                    json={"model": "gpt-4o", "messages": messages})
        assert resp.status_code == 200, (name, resp.text)
        tokens[name] = resp.json()["usage"]["prompt_tokens"]
    assert tokens["well"] > tokens["odd"] == tokens["odder"] > tokens["none"]


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string"}, "unit": {"type": "string",
                                                 "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}


def test_chat_tool_calls_when_asked_about_weather(server, http):
    body = chat_body("What is the weather in Paris today?", tools=[WEATHER_TOOL],
                     tool_choice="auto")
    data = post(http, server, "/chat/completions", json=body).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris",
                                                          "unit": "celsius"}
    # With the tool's answer appended, the model answers in text.
    body["messages"] += [choice["message"], {"role": "tool", "tool_call_id": call["id"],
                                             "content": '{"temp": 21}'}]
    follow = post(http, server, "/chat/completions", json=body).json()["choices"][0]
    assert follow["finish_reason"] == "stop" and "tool result" in follow["message"]["content"]
    # No weather, or tool_choice none: no call.
    plain = post(http, server, "/chat/completions",
                 json=chat_body("Hello", tools=[WEATHER_TOOL])).json()
    assert plain["choices"][0]["finish_reason"] == "stop"
    none = post(http, server, "/chat/completions",
                json=chat_body("weather?", tools=[WEATHER_TOOL], tool_choice="none")).json()
    assert none["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_shape_and_usage(server, http):
    plain = post(http, server, "/chat/completions", json=chat_body()).json()
    resp = post(http, server, "/chat/completions", stream=True,
                json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    payloads = [p for _, p in sse(resp)]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 8 + 1  # 8 events, then the usage chunk
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[7]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:7])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:8])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert len({c["id"] for c in chunks}) == 1


def test_chat_stream_tool_calls(server, http):
    resp = post(http, server, "/chat/completions", stream=True,
                json=chat_body("weather in Oslo?", tools=[WEATHER_TOOL], stream=True))
    chunks = [json.loads(p) for _, p in sse(resp) if p != "[DONE]"]
    args = "".join(c["choices"][0]["delta"].get("tool_calls", [{}])[0]
                   .get("function", {}).get("arguments", "") for c in chunks)
    assert json.loads(args)["location"] == "Oslo"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_events_arrive_separately_with_gap(server, http):
    server.configure(gap_ms=50, events=5)
    start = time.perf_counter()
    resp = post(http, server, "/chat/completions", stream=True, json=chat_body(stream=True))
    events = list(sse(resp))
    assert [p for _, p in events][-1] == "[DONE]"
    times = [t for t, p in events if p != "[DONE]"]
    assert len(times) == 5
    # Event i is sent i x 50 ms after the first: it can arrive late (the client was not
    # scheduled), never early. Late reading shortens the next gap, so the check is on the
    # time since the first event, not on each gap.
    since_first = [t - times[0] for t in times]
    assert all(s >= 0.050 * i - 0.010 for i, s in enumerate(since_first)), since_first
    assert times[0] - start < 0.5


def test_stream_knobs_ttft_and_per_request_headers(server, http):
    server.configure(ttft_ms=200)
    start = time.perf_counter()
    resp = post(http, server, "/completions", stream=True,
                json={"model": "text-davinci-003", "prompt": "Hi", "stream": True},
                headers={"X-Standin-Events": "3"})
    events = list(sse(resp))
    assert events[0][0] - start >= 0.18
    assert len(events) == 3 + 1


# -- completions, edits, embeddings, moderations ---------------------------------------------------


def test_completions_prompt_forms_and_stream(server, http):
    one = post(http, server, "/completions",
               json={"model": "text-davinci-003", "prompt": "Say this is a test"}).json()
    assert one["id"].startswith("cmpl-") and one["object"] == "text_completion"
    assert 'Re: "Say this is a test"' in one["choices"][0]["text"]
    many = post(http, server, "/completions",
                json={"model": "text-davinci-003", "prompt": ["a b", "c d e"], "n": 2,
                      "max_tokens": 3, "logprobs": 1}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" for c in many["choices"])
    assert many["usage"]["prompt_tokens"] == 5
    assert many["choices"][0]["logprobs"]["tokens"]
    tokens = post(http, server, "/completions",
                  json={"model": "davinci", "prompt": [[1, 2, 3], [4, 5]]}).json()
    assert tokens["usage"]["prompt_tokens"] == 5
    resp = post(http, server, "/completions", stream=True,
                json={"model": "davinci", "prompt": "Stream me", "stream": True})
    payloads = [p for _, p in sse(resp)]
    assert payloads[-1] == "[DONE]" and len(payloads) == 9
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_edits(server, http):
    data = post(http, server, "/edits", json={"model": "text-davinci-edit-001",
                                               "input": "What day of the wek is it?",
                                               "instruction": "Fix the spelling mistakes"}).json()
    assert data["object"] == "edit"
    assert data["choices"][0]["text"].startswith("What day of the wek is it?")
    assert "Fix the spelling mistakes" in data["choices"][0]["text"]
    assert data["usage"]["prompt_tokens"] == 11


def test_embeddings_float_base64_dimensions(server, http):
    data = post(http, server, "/embeddings",
                json={"model": "text-embedding-ada-002", "input": "hello world"}).json()
    vec = data["data"][0]["embedding"]
    assert len(vec) == 1536 and abs(math.fsum(v * v for v in vec) - 1) < 1e-6
    assert data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    b64 = post(http, server, "/embeddings",
               json={"model": "text-embedding-ada-002", "input": ["hello world", "bye"],
                     "encoding_format": "base64", "dimensions": 256}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack("<256f", raw)
    assert len(raw) == 256 * 4 and [d["index"] for d in b64["data"]] == [0, 1]
    assert abs(math.fsum(v * v for v in decoded) - 1) < 1e-4
    tokens = post(http, server, "/embeddings",
                  json={"model": "m", "input": [[1, 2, 3], [4]]}).json()
    assert tokens["usage"]["prompt_tokens"] == 4 and len(tokens["data"]) == 2
    server.configure(embedding_dimensions=8)
    small = post(http, server, "/embeddings", json={"model": "m", "input": "x"}).json()
    assert len(small["data"][0]["embedding"]) == 8


def test_moderations(server, http):
    data = post(http, server, "/moderations",
                json={"input": ["I want to kill them.", "I like flowers"]}).json()
    assert data["id"].startswith("modr-")
    bad, good = data["results"]
    assert bad["flagged"] and bad["categories"]["violence"]
    assert not good["flagged"]
    for key in ("hate", "hate/threatening", "self-harm", "sexual", "sexual/minors",
                "violence", "violence/graphic"):
        assert key in good["categories"] and key in good["category_scores"]


# -- images ----------------------------------------------------------------------------------------


def test_create_image_b64_json_is_a_real_png(server, http):
    data = post(http, server, "/images/generations",
                json={"prompt": "a red fox", "n": 2, "size": "256x256",
                      "response_format": "b64_json"}).json()
    assert isinstance(data["created"], int) and len(data["data"]) == 2
    png = base64.b64decode(data["data"][0]["b64_json"])
    assert png_size(png) == (256, 256)


def test_image_url_served_over_tls(server, http):
    data = post(http, server, "/images/generations",
                json={"prompt": "a lighthouse", "size": "512x512"}).json()
    url = data["data"][0]["url"]
    assert url.startswith(server.tls_base + "/images/") and url.endswith(".png")
    img = requests.get(url, verify=server.ca_file, timeout=10)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert png_size(img.content) == (512, 512)
    plain = requests.get(url.replace(server.tls_base, server.base), timeout=10)
    assert plain.content == img.content
    downloads = [e for e in server.requests() if e["path"].startswith("/images/")]
    assert [e["status"] for e in downloads] == [200, 200]
    server.configure(image_base_url="http://cdn.example.test")
    other = post(http, server, "/images/generations", json={"prompt": "x"}).json()
    assert other["data"][0]["url"].startswith("http://cdn.example.test/images/")


def test_image_edit_and_variation_multipart(server, http):
    png = requests.get(server.base + "/images/img-00ff00-64x64-00.png", timeout=5).content
    assert png_size(png) == (64, 64)
    edit = post(http, server, "/images/edits",
                files={"image": ("in.png", png, "image/png"),
                       "mask": ("mask.png", png, "image/png")},
                data={"prompt": "add a hat", "n": "2", "size": "256x256",
                      "response_format": "b64_json"})
    assert edit.status_code == 200, edit.text
    assert len(edit.json()["data"]) == 2
    var = post(http, server, "/images/variations",
               files={"image": ("in.png", png, "image/png")}, data={"n": "1"})
    assert var.status_code == 200 and "url" in var.json()["data"][0]
    logged = server.requests()[-2]
    assert {f["field"] for f in logged["files"]} == {"image", "mask"}
    assert logged["files"][0]["sha256"] == hashlib.sha256(png).hexdigest()
    assert post(http, server, "/images/edits", data={"prompt": "x"}).status_code == 400


# -- audio -----------------------------------------------------------------------------------------


def test_transcription_formats_and_upload_integrity(server, http):
    name, audio = multipart_file("speech.mp3", 3 * 1024 * 1024 + 7, b"audio")
    resp = post(http, server, "/audio/transcriptions",
                files={"file": (name, audio, "audio/mpeg")}, data={"model": "whisper-1"})
    text = resp.json()["text"]
    assert "speech.mp3" in text and f"{len(audio)} bytes" in text
    assert hashlib.sha256(audio).hexdigest()[:12] in text
    logged = server.requests()[-1]
    assert logged["form"]["model"] == "whisper-1"
    assert logged["files"][0] == {"field": "file", "filename": "speech.mp3",
                                  "content_type": "audio/mpeg", "bytes": len(audio),
                                  "sha256": hashlib.sha256(audio).hexdigest()}
    small = {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")}
    as_text = post(http, server, "/audio/transcriptions", files=small,
                   data={"model": "whisper-1", "response_format": "text"})
    assert as_text.headers["content-type"].startswith("text/plain")
    assert as_text.text.startswith("Transcript of a.wav (12 bytes")
    srt = post(http, server, "/audio/transcriptions", files=small,
               data={"model": "whisper-1", "response_format": "srt"}).text
    assert srt.startswith("1\n00:00:00,000 --> ")
    vtt = post(http, server, "/audio/transcriptions", files=small,
               data={"model": "whisper-1", "response_format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = post(http, server, "/audio/transcriptions", files=small,
                   data={"model": "whisper-1", "response_format": "verbose_json",
                         "language": "fr"}).json()
    assert verbose["language"] == "fr" and verbose["duration"] > 0
    assert verbose["segments"][0]["text"] == verbose["text"]


def test_translation(server, http):
    resp = post(http, server, "/audio/translations",
                files={"file": ("german.m4a", b"\x00" * 500, "audio/mp4")},
                data={"model": "whisper-1", "response_format": "verbose_json"})
    data = resp.json()
    assert data["task"] == "translate" and data["language"] == "english"
    assert data["text"].startswith("Translation of german.m4a (500 bytes")


# -- files -----------------------------------------------------------------------------------------


def test_file_round_trip_is_byte_exact(server, http):
    name, blob = multipart_file("train.jsonl", 5 * 1024 * 1024 + 3, b"file")
    created = post(http, server, "/files", files={"file": (name, blob)},
                   data={"purpose": "fine-tune"})
    assert created.status_code == 200, created.text
    meta = created.json()
    assert meta["id"].startswith("file-") and meta["object"] == "file"
    assert meta["bytes"] == len(blob) and meta["filename"] == name
    assert meta["purpose"] == "fine-tune" and isinstance(meta["created_at"], int)
    assert meta["id"] in [f["id"] for f in get(http, server, "/files").json()["data"]]
    assert get(http, server, f"/files/{meta['id']}").json() == meta
    content = get(http, server, f"/files/{meta['id']}/content")
    assert content.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(content.content).hexdigest() == hashlib.sha256(blob).hexdigest()
    deleted = http.delete(server.url + f"/files/{meta['id']}", timeout=10).json()
    assert deleted == {"id": meta["id"], "object": "file", "deleted": True}
    for resp in (get(http, server, f"/files/{meta['id']}"),
                 get(http, server, f"/files/{meta['id']}/content"),
                 http.delete(server.url + f"/files/{meta['id']}", timeout=10)):
        assert resp.status_code == 404 and "error" in resp.json()
    assert post(http, server, "/files", files={"file": ("x", b"1")}).status_code == 400


def test_chunked_request_body(server, http):
    payload = json.dumps(chat_body("sent in chunks")).encode()

    def pieces():
        for i in range(0, len(payload), 7):
            yield payload[i:i + 7]

    resp = post(http, server, "/chat/completions", data=pieces(),
                headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    assert '"sent in chunks"' in resp.json()["choices"][0]["message"]["content"]
    assert server.requests()[-1]["headers"]["transfer-encoding"] == "chunked"


def _raw_exchange(port: int, data: bytes, *, expect_responses: int = 1,
                  timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while buf.count(b"HTTP/1.1 ") < expect_responses or not buf.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_expect_100_continue(server):
    body = json.dumps(chat_body("hello")).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK")


def test_pipelined_keep_alive_requests_answer_in_order(server):
    req = (b"GET /v1/models/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n")
    data = req % b"whisper-1" + req % b"dall-e-2"
    answer = _raw_exchange(server.port, data, expect_responses=2)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b'"whisper-1"') < answer.index(b'"dall-e-2"')


# -- fine-tunes, models, engines -------------------------------------------------------------------


def test_fine_tunes_lifecycle(server, http):
    assert post(http, server, "/fine-tunes", json={}).status_code == 400
    upload = post(http, server, "/files", files={"file": ("t.jsonl", b'{"prompt":"a"}\n')},
                  data={"purpose": "fine-tune"}).json()
    job = post(http, server, "/fine-tunes",
               json={"training_file": upload["id"], "model": "curie"}).json()
    assert job["id"].startswith("ft-") and job["object"] == "fine-tune"
    assert job["status"] == "pending" and job["fine_tuned_model"] is None
    assert job["training_files"][0]["id"] == upload["id"]
    for key in ("created_at", "updated_at", "organization_id", "hyperparams",
                "validation_files", "result_files"):
        assert key in job
    assert job["id"] in [j["id"] for j in get(http, server, "/fine-tunes").json()["data"]]
    assert get(http, server, f"/fine-tunes/{job['id']}").json()["id"] == job["id"]
    events = get(http, server, f"/fine-tunes/{job['id']}/events").json()
    assert events["object"] == "list"
    assert events["data"][0]["object"] == "fine-tune-event"
    cancelled = post(http, server, f"/fine-tunes/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert post(http, server, f"/fine-tunes/{job['id']}/cancel").status_code == 400
    assert get(http, server, "/fine-tunes/ft-missing").status_code == 404


def test_fine_tune_event_stream_runs_the_job(server, http):
    job = post(http, server, "/fine-tunes",
               json={"training_file": "file-XGinujblHPwGLSztz8cPS8XY", "n_epochs": 2}).json()
    resp = get(http, server, f"/fine-tunes/{job['id']}/events", params={"stream": "true"},
               stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    payloads = [p for _, p in sse(resp)]
    assert payloads[-1] == "[DONE]"
    messages = [json.loads(p)["message"] for p in payloads[:-1]]
    assert messages[0].startswith("Created fine-tune") and messages[-1] == "Fine-tune succeeded"
    done = get(http, server, f"/fine-tunes/{job['id']}").json()
    assert done["status"] == "succeeded" and done["fine_tuned_model"]
    model = get(http, server, f"/models/{done['fine_tuned_model']}").json()
    assert model["owned_by"] == "standin-org"


def test_models_and_engines(server, http):
    models = get(http, server, "/models").json()
    assert models["object"] == "list"
    ids = {m["id"] for m in models["data"]}
    for required in ("gpt-3.5-turbo", "gpt-4o-mini", "text-davinci-003", "whisper-1",
                     "dall-e-2", "text-embedding-ada-002", "text-moderation-latest"):
        assert required in ids
    assert any(":ft-" in i or i.startswith("ft:") for i in ids)
    one = get(http, server, "/models/gpt-3.5-turbo").json()
    assert set(one) == {"id", "object", "created", "owned_by"}
    missing = get(http, server, "/models/no-such-model")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    deleted = http.delete(server.url + "/models/curie:ft-acmeco-2021-03-03-21-44-20").json()
    assert deleted == {"id": "curie:ft-acmeco-2021-03-03-21-44-20", "object": "model",
                       "deleted": True}
    engines = get(http, server, "/engines").json()
    assert engines["data"][0]["object"] == "engine" and engines["data"][0]["ready"] is True
    engine = get(http, server, "/engines/davinci").json()
    assert engine["id"] == "davinci" and "created" in engine


def test_search_answers_classifications(server, http):
    search = post(http, server, "/engines/davinci/search",
                  json={"documents": ["White House", "hospital", "school"],
                        "query": "the president lives in the White House"}).json()
    assert search["object"] == "list"
    assert [r["document"] for r in search["data"]] == [0, 1, 2]
    assert search["data"][0]["object"] == "search_result"
    assert max(search["data"], key=lambda r: r["score"])["document"] == 0
    answer = post(http, server, "/answers", json={
        "documents": ["Puppy A is happy.", "Puppy B is sad."],
        "question": "which puppy is happy?", "search_model": "ada", "model": "curie",
        "examples_context": "In 2017, U.S. life expectancy was 78.6 years.",
        "examples": [["What is human life expectancy in the United States?", "78 years."]],
        "max_tokens": 5}).json()
    assert answer["object"] == "answer" and answer["answers"]
    assert answer["completion"].startswith("cmpl-")
    assert answer["selected_documents"][0]["text"] == "Puppy A is happy."
    cls = post(http, server, "/classifications", json={
        "examples": [["A happy moment", "Positive"], ["I am sad.", "Negative"],
                     ["I am feeling awesome", "Positive"]],
        "query": "It is a raining day and I am sad", "labels": ["Positive", "Negative"],
        "search_model": "ada", "model": "curie"}).json()
    assert cls["object"] == "classification" and cls["label"] == "Negative"
    assert {e["label"] for e in cls["selected_examples"]} == {"Positive", "Negative"}


# -- faults ----------------------------------------------------------------------------------------


def test_status_fault_with_retry_after_applies_times_then_clears(server, http):
    server.fault(path="/v1/chat/completions", kind="status", status=429, retry_after=2,
                 times=2)
    for _ in range(2):
        resp = post(http, server, "/chat/completions", json=chat_body())
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "2"
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(http, server, "/chat/completions", json=chat_body()).status_code == 200
    server.fault(kind="status", status=503, body={"error": {"message": "custom"}},
                 method="GET", path="/v1/models*")
    assert post(http, server, "/chat/completions", json=chat_body()).status_code == 200
    resp = get(http, server, "/models/gpt-4o")
    assert resp.status_code == 503 and resp.json() == {"error": {"message": "custom"}}


def test_faults_are_consumed_in_order_and_can_be_cleared(server, http):
    server.fault(kind="status", status=500)
    server.fault(kind="status", status=502)
    server.fault(kind="status", status=503, times=-1)
    assert len(server.faults()) == 3
    codes = [get(http, server, "/models").status_code for _ in range(4)]
    assert codes == [500, 502, 503, 503]
    server.clear_faults()
    assert server.faults() == []
    assert get(http, server, "/models").status_code == 200
    with pytest.raises(StandinError):
        server.fault(kind="explode")


def test_delay_fault(server, http):
    server.fault(path="/v1/embeddings", kind="delay", seconds=0.3)
    start = time.perf_counter()
    resp = post(http, server, "/embeddings", json={"model": "m", "input": "x"})
    assert resp.status_code == 200 and time.perf_counter() - start >= 0.28
    server.fault(path="/v1/embeddings", kind="delay", seconds=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(server.url + "/embeddings", json={"model": "m", "input": "x"}, timeout=0.2)


def test_reset_fault_drops_the_connection(server, http):
    server.fault(path="/v1/models", kind="reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(http, server, "/models")
    assert get(http, server, "/models").status_code == 200


def test_cut_fault_ends_stream_without_done_or_terminator(server, http):
    server.fault(path="/v1/chat/completions", kind="cut", after=3)
    resp = post(http, server, "/chat/completions", stream=True, json=chat_body(stream=True))
    received = []
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        for _, payload in sse(resp):
            received.append(payload)
    assert len(received) == 3 and "[DONE]" not in received
    # A non-streaming answer is cut in the middle of its body.
    server.fault(path="/v1/models", kind="cut")
    with pytest.raises(requests.exceptions.RequestException):
        get(http, server, "/models")


def test_hang_stream_fault_stalls_after_some_events(server, http):
    server.fault(path="/v1/chat/completions", kind="hang_stream", after=2, seconds=0.4)
    resp = post(http, server, "/chat/completions", stream=True, json=chat_body(stream=True))
    events = list(sse(resp))
    assert len(events) == 9 and events[-1][1] == "[DONE]"
    assert events[2][0] - events[1][0] >= 0.35
    assert events[1][0] - events[0][0] < 0.3
    server.fault(path="/v1/chat/completions", kind="hang_stream", after=1, seconds=5)
    resp = http.post(server.url + "/chat/completions", json=chat_body(stream=True),
                     stream=True, timeout=(2, 0.3))
    got = []
    with pytest.raises(requests.exceptions.RequestException):  # the read timeout fires
        for _, payload in sse(resp):
            got.append(payload)
    assert len(got) == 1


def test_no_done_fault_ends_cleanly_without_done(server, http):
    server.fault(path="/v1/completions", kind="no_done")
    resp = post(http, server, "/completions", stream=True,
                json={"model": "davinci", "prompt": "x", "stream": True})
    payloads = [p for _, p in sse(resp)]
    assert len(payloads) == 8 and "[DONE]" not in payloads


def test_malformed_fault(server, http):
    server.fault(path="/v1/chat/completions", kind="malformed")
    resp = post(http, server, "/chat/completions", json=chat_body())
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(resp.content)


# -- control API: request log, config, fast mode ---------------------------------------------------


def test_request_log_records_selected_headers_and_bodies(server, http):
    post(http, server, "/chat/completions", json=chat_body("logged"),
         headers={"OpenAI-Organization": "org-123", "Idempotency-Key": "idem-1",
                  "X-Request-ID": "client-req-1", "User-Agent": "standin-test/1",
                  "X-Not-Logged": "secret"})
    get(http, server, "/models", params={"limit": "3"})
    entries = server.requests()
    assert [e["path"] for e in entries] == ["/v1/chat/completions", "/v1/models"]
    first = entries[0]
    assert first["method"] == "POST" and first["status"] == 200
    assert first["headers"]["authorization"] == "Bearer ...1234"
    assert first["headers"]["openai-organization"] == "org-123"
    assert first["headers"]["idempotency-key"] == "idem-1"
    assert first["headers"]["x-request-id"] == "client-req-1"
    assert first["headers"]["user-agent"] == "standin-test/1"
    assert first["headers"]["content-type"] == "application/json"
    assert "x-not-logged" not in first["headers"]
    assert first["body"]["messages"][0]["content"] == "logged"
    assert first["request_id"].startswith("req_")
    assert entries[1]["query"] == {"limit": "3"}
    assert server.requests(limit=1) == entries[-1:]
    server.clear_requests()
    assert server.requests() == []


def test_request_log_is_a_ring_buffer():
    with StandinServer(log_size=3) as srv:
        for i in range(5):
            requests.get(f"{srv.url}/models/m{i}", headers=AUTH, timeout=5)
        assert [e["path"] for e in srv.requests()] == [f"/v1/models/m{i}" for i in (2, 3, 4)]


def test_config_endpoint_round_trip(server):
    cfg = server.configure(ttft_ms=5, gap_ms=7, events=4)
    assert (cfg["ttft_ms"], cfg["gap_ms"], cfg["events"]) == (5, 7, 4)
    assert server.config() == cfg
    with pytest.raises(StandinError):
        server.configure(bogus=1)


def test_fast_mode_keeps_no_log():
    with StandinServer(fast=True) as srv:
        resp = requests.post(srv.url + "/chat/completions", json=chat_body(), headers=AUTH,
                             timeout=5)
        assert resp.status_code == 200
        assert srv.requests() == []


def test_many_concurrent_slow_streams():
    """2,000 streams open at once: each must get all its events (asyncio sleeps, no threads)."""
    n = 2000
    try:  # this process holds 2,000 client sockets too
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 3 * n:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * n), hard))
    except (ImportError, ValueError, OSError):
        pass
    # The first event comes 1.5 s after the head, so every stream is open at the same time.
    with StandinServer(fast=True, events=3, ttft_ms=1500, gap_ms=100) as srv:
        body = json.dumps(chat_body(stream=True)).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k"
                   b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                   % (len(body), body))
        live = {"now": 0, "peak": 0}

        async def one() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])
            try:
                writer.write(request)
                data = b""
                while not data.endswith(b"0\r\n\r\n"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                live["now"] -= 1
                writer.close()
            return data.count(b"data: ") == 4 and b"data: [DONE]" in data

        async def run() -> tuple[list, float]:
            started = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(n)))
            return results, time.perf_counter() - started

        results, elapsed = asyncio.run(run())
        assert all(results)
        assert live["peak"] == n
        assert elapsed < 20


# -- the official SDK against the stand-in ---------------------------------------------------------


def test_openai_sdk_against_the_standin(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key="sk-sdk-test", max_retries=1)

    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello SDK"}])
    assert 'You said: "Hello SDK"' in chat.choices[0].message.content
    assert chat.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello SDK"}], stream=True,
        stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == chat.choices[0].message.content
    assert usage is not None and usage.total_tokens == chat.usage.total_tokens

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 1536  # decoded from base64
    assert server.requests()[-1]["body"].get("encoding_format") == "base64"
    emb_small = client.embeddings.create(model="text-embedding-3-small", input="x",
                                         dimensions=32, encoding_format="float")
    assert len(emb_small.data[0].embedding) == 32

    img = client.images.generate(prompt="a cat", size="256x256", response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json)[:8] == PNG_SIGNATURE

    audio = io.BytesIO(b"ID3" + bytes(2048))
    audio.name = "hello.mp3"
    tr = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert tr.text.startswith("Transcript of hello.mp3 (2051 bytes")

    uploaded = client.files.create(file=("data.jsonl", b'{"x": 1}\n'), purpose="fine-tune")
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(uploaded.id).bytes == 9
    assert client.files.content(uploaded.id).content == b'{"x": 1}\n'
    assert client.files.delete(uploaded.id).deleted is True

    assert "gpt-4o-mini" in [m.id for m in client.models.list()]
    assert client.models.retrieve("whisper-1").owned_by

    # The SDK's retry honours the stand-in's 429 + Retry-After.
    server.fault(path="/v1/models", kind="status", status=429, retry_after=0)
    assert client.models.list().data
    assert [e["status"] for e in server.requests()[-2:]] == [429, 200]
    with StandinServer(api_key="sk-right", fast=True) as strict, \
            pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict.url, api_key="sk-wrong", max_retries=0).models.list()
