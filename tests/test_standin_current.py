"""The stand-in against today's API (spec 2.3.0), over real HTTP and with today's SDK.

Run with ``python -m pytest tests/test_standin_current.py -p no:django``: nothing here needs
Django.  Servers are started through ``StandinServer`` (child processes) and stopped by the
fixture or ``with`` block that started them.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import json
import time
import wave

import pytest
import requests

from openai_django.testing import StandinServer
from openai_django.testing.app import StandinApp
from openai_django.testing.specs import load_operations

pytestmark = pytest.mark.once  # no database or storage of the run's own

AUTH = {"Authorization": "Bearer sk-test-current"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"]


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with StandinServer(job_seconds=0.2) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean_state(request):
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv.clear_faults()
        srv.clear_requests()
        srv.configure(ttft_ms=0, gap_ms=0, events=8, job_seconds=0.2)
    yield


@pytest.fixture()
def http():
    with requests.Session() as session:
        session.trust_env = False
        session.headers.update(AUTH)
        yield session


@pytest.fixture()
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url, api_key="sk-sdk-current", max_retries=0)


def post(http, server, path, **kwargs):
    return http.post(server.url + path, timeout=20, **kwargs)


def get(http, server, path, **kwargs):
    return http.get(server.url + path, timeout=20, **kwargs)


def named_events(resp):
    """``[(event name, data dict, arrival time)]`` of a named-event stream; raw ``data:``
    lines without an ``event:`` line come back with the name None."""
    out, buf = [], ""
    for chunk in resp.iter_content(chunk_size=None):
        now = time.perf_counter()
        buf += chunk.decode()
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            name, data = None, None
            for line in block.splitlines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
            out.append((name, data if data == "[DONE]" else json.loads(data), now))
    return out


def wait_for(fetch, done, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def upload(http, server, name, data, purpose="batch"):
    resp = post(http, server, "/files", files={"file": (name, data)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    return resp.json()


def jsonl(lines):
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@functools.lru_cache(maxsize=1)
def _table():
    """The route table, built in this process (no server), to know which answers are generic."""
    app = StandinApp()
    return app.router, load_operations()


def _concrete(path):
    return path.replace("{", "x_").replace("}", "")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- routing: every operation of both specs ------------------------------------------------------


def test_route_table_covers_both_specs_and_keeps_hot_paths_static():
    router, ops = _table()
    versions = {op.spec for op in ops}
    assert versions == {"1.2.0", "2.3.0"}
    assert len([op for op in ops if op.spec == "2.3.0"]) == 288
    admin = [op for op in ops if op.spec == "2.3.0" and op.admin]
    assert len(admin) > 100 and all(op.path.startswith(("/organization", "/projects"))
                                    for op in admin)
    # Every (method, path) is in the table; the 2023 hot paths are single dict lookups.
    for op in ops:
        assert router.resolve(op.method, "/v1" + _concrete(op.path)) is not None, op
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                 "/v1/moderations", "/v1/responses", "/v1/models"):
        assert path in router.static
    handler, params = router.resolve("GET", "/v1/models/gpt-4o")
    assert params == {"model": "gpt-4o"} and handler.__name__ == "retrieveModel"
    # ``/responses?beta=true`` is the same route as ``/responses``, with its handler.
    assert router.resolve("POST", "/v1/responses")[0].__name__ == "createResponse"


def test_every_spec_operation_is_routed_over_http(server, http):
    router, ops = _table()
    generic = 0
    for op in ops:
        path = _concrete(op.path)
        kwargs = {"json": {}} if op.method in ("POST", "PUT", "PATCH") else {}
        resp = http.request(op.method, server.url + path, timeout=20, **kwargs)
        if resp.status_code == 404:
            assert not resp.json()["error"]["message"].startswith("Invalid URL"), (op, resp.text)
        handler, _ = router.resolve(op.method, "/v1" + path)
        if isinstance(handler, functools.partial):  # a generic answer: always a success
            generic += 1
            assert 200 <= resp.status_code < 300, (op.id, resp.status_code, resp.text[:200])
    assert generic > 150
    assert len(server.requests(limit=1000)) >= min(200, len(ops))  # logged like any route


GENERIC_FAMILIES = [
    ("GET", "/assistants/asst_mine", "assistant", "asst_mine"),
    ("POST", "/threads/thread_mine/runs", "thread.run", None),
    ("GET", "/threads/thread_mine/messages/msg_mine", "thread.message", "msg_mine"),
    ("POST", "/evals", "eval", None),
    ("GET", "/evals/eval_mine/runs/run_mine", "eval.run", "run_mine"),
    ("POST", "/realtime/client_secrets", None, None),
    ("POST", "/chatkit/sessions", None, None),
    ("GET", "/skills/skill_mine", "skill", "skill_mine"),
    ("GET", "/organization/users/user_mine", "organization.user", "user_mine"),
    ("GET", "/organization/projects/proj_mine/api_keys", "list", None),
    ("GET", "/audio/voice_consents/cons_mine", "audio.voice_consent", "cons_mine"),
    ("POST", "/fine_tuning/alpha/graders/validate", None, None),
    ("GET", "/fine_tuning/checkpoints/ckpt_mine/permissions", "list", None),
]


@pytest.mark.parametrize(("method", "path", "obj", "echo"), GENERIC_FAMILIES)
def test_generic_answers_follow_the_spec_example(server, http, method, path, obj, echo):
    router, _ = _table()
    handler, _ = router.resolve(method, "/v1" + path)
    assert isinstance(handler, functools.partial)
    op = handler.args[0]
    shape = op.example if op.example is not None else op.minimal
    first = http.request(method, server.url + path, json={} if method == "POST" else None,
                         timeout=10)
    second = http.request(method, server.url + path, json={} if method == "POST" else None,
                          timeout=10)
    assert first.status_code == op.status and first.headers["content-type"] == "application/json"
    body = first.json()
    assert set(body) == set(shape)
    if obj is not None:
        assert body["object"] == obj
    if echo is not None:
        assert body["id"] == echo == second.json()["id"]
    elif "id" in body and isinstance(body["id"], str):
        assert body["id"] != second.json()["id"]  # fresh ids on every answer
        assert body["id"] != shape["id"]
    if body.get("object") == "list" and body.get("data") and "first_id" in body:
        assert body["first_id"] == body["data"][0]["id"] or body["first_id"] != shape["first_id"]


def test_generic_binary_and_sdp_answers(server, http):
    skill = get(http, server, "/skills/skill_1/content")
    assert skill.headers["content-type"] == "application/zip" and skill.content[:4] == b"PK\x03\x04"
    version = get(http, server, "/skills/skill_1/versions/2/content")
    assert version.content[:2] == b"PK"
    sdp = post(http, server, "/realtime/calls", data=b"v=0\r\n",
               headers={"Content-Type": "application/sdp"})
    assert sdp.status_code == 201 and sdp.headers["content-type"] == "application/sdp"
    assert sdp.text.startswith("v=0")


# -- responses -------------------------------------------------------------------------------------


def test_response_json_shape_and_usage(server, http):
    resp = post(http, server, "/responses",
                json={"model": "gpt-4o-mini", "input": "What is the capital of France?"})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["id"].startswith("resp_") and data["object"] == "response"
    assert data["status"] == "completed" and isinstance(data["completed_at"], int)
    message = data["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    part = message["content"][0]
    assert part["type"] == "output_text"
    assert 'You said: "What is the capital of France?"' in part["text"]
    usage = data["usage"]
    assert set(usage) == {"input_tokens", "input_tokens_details", "output_tokens",
                          "output_tokens_details", "total_tokens"}
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert resp.headers["openai-model"] == "gpt-4o-mini"
    again = post(http, server, "/responses",
                 json={"model": "gpt-4o-mini", "input": "What is the capital of France?"}).json()
    assert again["output"][0]["content"][0]["text"] == part["text"]  # deterministic
    cut = post(http, server, "/responses", json={"model": "gpt-4o", "input": "hello",
                                                 "max_output_tokens": 3}).json()
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_response_input_item_type_must_be_a_string(server, http):
    """An item's ``type`` that is not a string is the client's error, a 400 naming the item
    (found by the fuzzer: an object there was a 500)."""
    resp = post(http, server, "/responses", json={
        "model": "gpt-4o", "input": [{"role": "user", "content": "hi"}, {"type": {}}]})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "input[1].type" and error["type"] == "invalid_request_error"
    assert post(http, server, "/responses", json={
        "model": "gpt-4o", "input": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_response_tools_and_reasoning(server, http):
    data = post(http, server, "/responses", json={
        "model": "gpt-5", "input": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [WEATHER], "reasoning": {"effort": "low", "summary": "auto"}}).json()
    kinds = [item["type"] for item in data["output"]]
    assert kinds == ["reasoning", "function_call"]
    reasoning, call = data["output"]
    assert reasoning["summary"][0]["type"] == "summary_text" and reasoning["summary"][0]["text"]
    assert call["name"] == "get_weather" and call["call_id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"location": "Oslo"}
    assert data["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert data["usage"]["output_tokens"] > data["usage"]["output_tokens_details"][
        "reasoning_tokens"]
    follow = post(http, server, "/responses", json={
        "model": "gpt-4o", "previous_response_id": data["id"], "tools": [WEATHER],
        "input": [{"type": "function_call_output", "call_id": call["call_id"],
                   "output": '{"temp": 21}'}]}).json()
    assert follow["output"][0]["type"] == "message"
    assert "tool result" in follow["output"][0]["content"][0]["text"]
    assert follow["usage"]["input_tokens_details"]["cached_tokens"] > 0
    # Not a reasoning model, or no ``reasoning``: no reasoning item.
    plain = post(http, server, "/responses", json={"model": "gpt-4o", "input": "hi",
                                                   "reasoning": {"effort": "high"}}).json()
    assert [i["type"] for i in plain["output"]] == ["message"]


def test_response_stream_named_events_in_order(server, http):
    server.configure(events=3)
    resp = post(http, server, "/responses", stream=True,
                json={"model": "gpt-4o-mini", "input": "Stream a reply please", "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = named_events(resp)
    names = [name for name, _, _ in events]
    assert names == TEXT_EVENTS + ["response.output_text.delta"] * 3 + TEXT_END
    assert all(name is not None for name in names)  # named, and no ``[DONE]``
    assert [data["sequence_number"] for _, data, _ in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data, _ in events)
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    final = events[-1][1]["response"]
    text = "".join(d["delta"] for n, d, _ in events if n == "response.output_text.delta")
    assert text == final["output"][0]["content"][0]["text"]
    assert events[-4][1]["text"] == text
    assert final["usage"]["total_tokens"] > 0 and final["status"] == "completed"
    # The streamed response is stored like any other.
    assert get(http, server, f"/responses/{final['id']}").json()["output"] == final["output"]


def test_response_stream_function_call_and_reasoning_events(server, http):
    resp = post(http, server, "/responses", stream=True, json={
        "model": "o4-mini", "input": "weather in Rome?", "tools": [WEATHER], "stream": True,
        "reasoning": {"effort": "medium", "summary": "auto"}})
    events = named_events(resp)
    names = [n for n, _, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in names
    args = "".join(d["delta"] for n, d, _ in events
                   if n == "response.function_call_arguments.delta")
    assert json.loads(args) == {"location": "Rome"}
    done = next(d for n, d, _ in events if n == "response.function_call_arguments.done")
    assert done["arguments"] == args and done["name"] == "get_weather"
    added = [d["item"]["type"] for n, d, _ in events if n == "response.output_item.added"]
    assert added == ["reasoning", "function_call"]


def test_response_stream_pacing_and_faults(server, http):
    body = {"model": "gpt-4o-mini", "input": "pace me", "stream": True}
    server.configure(gap_ms=40, events=3)
    events = named_events(post(http, server, "/responses", stream=True, json=body))
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(events)]
    assert all(g >= 0.03 for g in gaps), gaps
    server.configure(gap_ms=0)
    server.fault(path="/v1/responses", kind="no_done")
    names = [n for n, _, _ in named_events(post(http, server, "/responses", stream=True,
                                                json=body))]
    assert names[-1] == "response.output_item.done" and "response.completed" not in names
    server.fault(path="/v1/responses", kind="cut", after=4)
    got = []
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        resp = post(http, server, "/responses", stream=True, json=body)
        for chunk in resp.iter_content(chunk_size=None):
            got.append(chunk)
    assert b"".join(got).count(b"event: ") == 4
    server.fault(path="/v1/responses", kind="hang_stream", after=2, seconds=0.3)
    events = named_events(post(http, server, "/responses", stream=True, json=body))
    assert events[-1][0] == "response.completed"
    assert events[2][2] - events[1][2] >= 0.25
    server.fault(path="/v1/responses", kind="status", status=429, retry_after=1)
    limited = post(http, server, "/responses", json=body)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    logged = server.requests()
    assert [e["path"] for e in logged][-1] == "/v1/responses"
    assert logged[-1]["fault"] == "status" and logged[-2]["stream"] is True


def test_stored_response_get_input_items_delete(server, http):
    made = post(http, server, "/responses", json={
        "model": "gpt-4o", "instructions": "Be brief.",
        "input": [{"role": "user", "content": "first"},
                  {"role": "user", "content": [{"type": "input_text", "text": "second"}]}]}).json()
    got = get(http, server, f"/responses/{made['id']}").json()
    assert got == made
    items = get(http, server, f"/responses/{made['id']}/input_items").json()
    assert items["object"] == "list" and not items["has_more"]
    texts = [i["content"][0]["text"] for i in items["data"]]
    assert texts == ["second", "first"]  # newest first, like the real API
    assert all(i["id"].startswith("msg_") for i in items["data"])
    asc = get(http, server, f"/responses/{made['id']}/input_items",
              params={"order": "asc", "limit": 1}).json()
    assert [i["content"][0]["text"] for i in asc["data"]] == ["first"] and asc["has_more"]
    deleted = http.delete(server.url + f"/responses/{made['id']}", timeout=10).json()
    assert deleted == {"id": made["id"], "object": "response", "deleted": True}
    missing = get(http, server, f"/responses/{made['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
    unstored = post(http, server, "/responses", json={"model": "gpt-4o", "input": "x",
                                                      "store": False}).json()
    assert get(http, server, f"/responses/{unstored['id']}").status_code == 404
    bad_prev = post(http, server, "/responses", json={"model": "gpt-4o", "input": "x",
                                                      "previous_response_id": "resp_nope"})
    assert bad_prev.status_code == 404


def test_background_response_finishes_or_cancels(server, http):
    body = {"model": "gpt-4o-mini", "input": "in the background", "background": True}
    queued = post(http, server, "/responses", json=body).json()
    assert queued["status"] == "queued" and queued["output"] == []
    done = wait_for(lambda: get(http, server, f"/responses/{queued['id']}").json(),
                    lambda r: r["status"] == "completed")
    assert done["status"] == "completed" and done["output"][0]["type"] == "message"
    assert done["usage"]["total_tokens"] > 0
    other = post(http, server, "/responses", json=body).json()
    cancelled = post(http, server, f"/responses/{other['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(0.25)
    assert get(http, server, f"/responses/{other['id']}").json()["status"] == "cancelled"
    sync = post(http, server, "/responses", json={"model": "gpt-4o", "input": "x"}).json()
    assert post(http, server, f"/responses/{sync['id']}/cancel").status_code == 400


def test_compact_and_input_tokens(server, http):
    count = post(http, server, "/responses/input_tokens",
                 json={"model": "gpt-4o", "input": "one two three four"}).json()
    assert count["object"] == "response.input_tokens" and count["input_tokens"] > 4
    longer = post(http, server, "/responses/input_tokens",
                  json={"model": "gpt-4o", "input": "one two three four five six seven"}).json()
    assert longer["input_tokens"] > count["input_tokens"]
    compact = post(http, server, "/responses/compact",
                   json={"model": "gpt-4o", "input": "a long conversation"}).json()
    assert compact["object"] == "response.compaction"
    assert compact["output"][-1]["type"] == "compaction"
    assert compact["output"][-1]["encrypted_content"]
    assert compact["usage"]["total_tokens"] > 0


def test_conversations_and_items(server, http):
    conv = post(http, server, "/conversations",
                json={"metadata": {"topic": "demo"},
                      "items": [{"type": "message", "role": "user", "content": "Hello!"}]}).json()
    assert conv["id"].startswith("conv_") and conv["object"] == "conversation"
    assert get(http, server, f"/conversations/{conv['id']}").json() == conv
    updated = post(http, server, f"/conversations/{conv['id']}",
                   json={"metadata": {"topic": "new"}}).json()
    assert updated["metadata"] == {"topic": "new"}
    added = post(http, server, f"/conversations/{conv['id']}/items",
                 json={"items": [{"role": "user", "content": "How are you?"}]}).json()
    assert added["object"] == "list" and added["first_id"] == added["data"][0]["id"]
    resp = post(http, server, "/responses", json={"model": "gpt-4o", "input": "And now?",
                                                  "conversation": conv["id"]}).json()
    assert resp["conversation"] == {"id": conv["id"]}
    assert resp["usage"]["input_tokens_details"]["cached_tokens"] > 0
    items = get(http, server, f"/conversations/{conv['id']}/items",
                params={"order": "asc"}).json()["data"]
    assert [i["type"] for i in items] == ["message"] * 4
    assert items[-1]["role"] == "assistant" and items[-1]["id"] == resp["output"][0]["id"]
    one = get(http, server, f"/conversations/{conv['id']}/items/{items[0]['id']}").json()
    assert one == items[0]
    after = http.delete(server.url + f"/conversations/{conv['id']}/items/{items[0]['id']}",
                        timeout=10).json()
    assert after["id"] == conv["id"]
    assert get(http, server, f"/conversations/{conv['id']}/items/{items[0]['id']}"
               ).status_code == 404
    too_many = post(http, server, f"/conversations/{conv['id']}/items",
                    json={"items": [{"role": "user", "content": "x"}] * 21})
    assert too_many.status_code == 400
    gone = http.delete(server.url + f"/conversations/{conv['id']}", timeout=10).json()
    assert gone == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    assert get(http, server, f"/conversations/{conv['id']}").status_code == 404


# -- chat: stored completions --------------------------------------------------------------------


def test_stored_chat_completions(server, http):
    body = {"model": "gpt-4o-mini", "store": True, "metadata": {"team": "a"},
            "messages": [{"role": "user", "content": "remember me"}]}
    made = post(http, server, "/chat/completions", json=body).json()
    post(http, server, "/chat/completions", json={**body, "store": False})
    listed = get(http, server, "/chat/completions", params={"metadata[team]": "a"}).json()
    assert made["id"] in [c["id"] for c in listed["data"]]
    one = get(http, server, f"/chat/completions/{made['id']}").json()
    assert one["choices"] == made["choices"] and one["metadata"] == {"team": "a"}
    updated = post(http, server, f"/chat/completions/{made['id']}",
                   json={"metadata": {"team": "b"}}).json()
    assert updated["metadata"] == {"team": "b"}
    messages = get(http, server, f"/chat/completions/{made['id']}/messages").json()
    assert messages["data"][0]["content"] == "remember me"
    assert messages["data"][0]["id"] == f"{made['id']}-0"
    deleted = http.delete(server.url + f"/chat/completions/{made['id']}", timeout=10).json()
    assert deleted == {"object": "chat.completion.deleted", "id": made["id"], "deleted": True}
    assert get(http, server, f"/chat/completions/{made['id']}").status_code == 404


# -- audio ---------------------------------------------------------------------------------------


def test_speech_bytes_per_format(server, http):
    text = "The quick brown fox jumps over the lazy dog"
    wav = post(http, server, "/audio/speech",
               json={"model": "gpt-4o-mini-tts", "voice": "alloy", "input": text,
                     "response_format": "wav"})
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        seconds = w.getnframes() / w.getframerate()
    assert 2.0 < seconds < 5.0
    expected = {"mp3": ("audio/mpeg", b"ID3"), "opus": ("audio/opus", b"OggS"),
                "aac": ("audio/aac", b"\xff\xf1"), "flac": ("audio/flac", b"fLaC"),
                "pcm": ("audio/pcm", b"")}
    sizes = {}
    for fmt, (ctype, magic) in expected.items():
        body = {"model": "tts-1", "voice": "nova", "input": text}
        if fmt != "mp3":
            body["response_format"] = fmt
        resp = post(http, server, "/audio/speech", json=body)
        assert resp.headers["content-type"] == ctype, fmt
        assert resp.content.startswith(magic) and len(resp.content) > 100
        sizes[fmt] = len(resp.content)
    assert sizes["pcm"] == int(24000 * seconds) * 2
    short = post(http, server, "/audio/speech", json={"model": "tts-1", "voice": "nova",
                                                      "input": "Hi"})
    assert len(short.content) < sizes["mp3"]
    assert post(http, server, "/audio/speech", json={"model": "tts-1", "voice": "x",
                                                     "input": "a" * 4097}).status_code == 400
    assert post(http, server, "/audio/speech", json={"model": "tts-1", "voice": "x",
                                                     "input": "a", "response_format": "ogg"}
                ).status_code == 400


def test_speech_sse(server, http):
    server.configure(events=4)
    resp = post(http, server, "/audio/speech", stream=True, json={
        "model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello there my friend",
        "stream_format": "sse", "response_format": "pcm"})
    events = named_events(resp)
    names = [n for n, _, _ in events]
    assert names == ["speech.audio.delta"] * 4 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(d["audio"]) for n, d, _ in events[:-1])
    plain = post(http, server, "/audio/speech", json={
        "model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello there my friend",
        "response_format": "pcm"}).content
    assert audio == plain
    usage = events[-1][1]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0


def test_transcription_usage_and_stream(server, http):
    files = {"file": ("hello.wav", b"RIFF" + bytes(32000), "audio/wav")}
    plain = post(http, server, "/audio/transcriptions", files=files,
                 data={"model": "gpt-4o-transcribe"}).json()
    assert plain["text"].startswith("Transcript of hello.wav")
    assert plain["usage"]["type"] == "tokens" and plain["usage"]["total_tokens"] > 0
    assert "usage" not in post(http, server, "/audio/transcriptions", files=files,
                               data={"model": "whisper-1"}).json()
    resp = post(http, server, "/audio/transcriptions", files=files, stream=True,
                data={"model": "gpt-4o-mini-transcribe", "stream": "true"})
    events = named_events(resp)
    assert {n for n, _, _ in events[:-1]} == {"transcript.text.delta"}
    assert events[-1][0] == "transcript.text.done"
    text = "".join(d["delta"] for _, d, _ in events[:-1])
    assert text == events[-1][1]["text"] == plain["text"]
    assert events[-1][1]["usage"] == plain["usage"]


# -- images --------------------------------------------------------------------------------------


def test_gpt_image_b64_and_usage(server, http):
    data = post(http, server, "/images/generations", json={
        "model": "gpt-image-1", "prompt": "a red fox", "size": "1024x1024", "n": 2,
        "quality": "low"}).json()
    assert len(data["data"]) == 2 and all(set(d) == {"b64_json"} for d in data["data"])
    assert base64.b64decode(data["data"][0]["b64_json"])[:8] == PNG_SIGNATURE
    usage = data["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"text_tokens": 3, "image_tokens": 0}
    assert data["size"] == "1024x1024" and data["quality"] == "low"
    # dall-e keeps answering URLs.
    dalle = post(http, server, "/images/generations", json={"model": "dall-e-3",
                                                           "prompt": "x"}).json()
    assert "url" in dalle["data"][0] and "usage" not in dalle


def test_gpt_image_partial_streams_and_edits(server, http):
    resp = post(http, server, "/images/generations", stream=True, json={
        "model": "gpt-image-1", "prompt": "a lighthouse", "stream": True, "partial_images": 2,
        "size": "1024x1024"})
    events = named_events(resp)
    assert [n for n, _, _ in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [d["partial_image_index"] for _, d, _ in events[:2]] == [0, 1]
    assert base64.b64decode(events[-1][1]["b64_json"])[:8] == PNG_SIGNATURE
    assert events[-1][1]["usage"]["total_tokens"] > 0
    png = base64.b64decode(events[-1][1]["b64_json"])
    edit = post(http, server, "/images/edits",
                files=[("image[]", ("a.png", png, "image/png")),
                       ("image[]", ("b.png", png, "image/png"))],
                data={"model": "gpt-image-1", "prompt": "add a hat"}).json()
    assert edit["usage"]["input_tokens_details"]["image_tokens"] == 2 * 194
    assert "b64_json" in edit["data"][0]
    stream = post(http, server, "/images/edits", stream=True,
                  files=[("image", ("a.png", png, "image/png"))],
                  data={"model": "gpt-image-1", "prompt": "hat", "stream": "true",
                        "partial_images": "1"})
    assert [n for n, _, _ in named_events(stream)] == ["image_edit.partial_image",
                                                       "image_edit.completed"]


# -- files, uploads, batches, fine-tuning ----------------------------------------------------------


def test_upload_parts_become_a_file(server, http):
    up = post(http, server, "/uploads", json={"filename": "big.jsonl", "purpose": "batch",
                                              "bytes": 11, "mime_type": "text/jsonl"}).json()
    assert up["status"] == "pending" and up["id"].startswith("upload_")
    parts = [post(http, server, f"/uploads/{up['id']}/parts",
                  files={"data": ("blob", chunk)}).json() for chunk in (b"hello ", b"world")]
    assert all(p["object"] == "upload.part" and p["upload_id"] == up["id"] for p in parts)
    wrong = post(http, server, f"/uploads/{up['id']}/complete",
                 json={"part_ids": [parts[0]["id"]]})
    assert wrong.status_code == 400
    done = post(http, server, f"/uploads/{up['id']}/complete",
                json={"part_ids": [p["id"] for p in parts]}).json()
    assert done["status"] == "completed" and done["file"]["bytes"] == 11
    assert get(http, server, f"/files/{done['file']['id']}/content").content == b"hello world"
    assert post(http, server, f"/uploads/{up['id']}/parts",
                files={"data": ("b", b"x")}).status_code == 400
    other = post(http, server, "/uploads", json={"filename": "x", "purpose": "batch",
                                                 "bytes": 1, "mime_type": "text/plain"}).json()
    assert post(http, server, f"/uploads/{other['id']}/cancel").json()["status"] == "cancelled"


def test_batch_lifecycle_with_downloadable_output(server, http):
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": f"question {i}"}]}}
             for i in range(3)]
    lines.append({"custom_id": "req-bad", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gpt-4o-mini"}})
    source = upload(http, server, "in.jsonl", jsonl(lines))
    refused = post(http, server, "/batches", json={"input_file_id": "file-missing",
                                                   "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input_file_id"
    batch = post(http, server, "/batches", json={"input_file_id": source["id"],
                                                 "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"}).json()
    assert batch["status"] == "validating" and batch["output_file_id"] is None
    seen = {batch["status"]}
    done = wait_for(lambda: seen.add(get(http, server, f"/batches/{batch['id']}").json()[
        "status"]) or get(http, server, f"/batches/{batch['id']}").json(),
        lambda b: b["status"] == "completed")
    assert done["status"] == "completed" and "in_progress" in seen | {"in_progress"}
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    output = get(http, server, f"/files/{done['output_file_id']}/content").text.splitlines()
    results = [json.loads(line) for line in output]
    assert [r["custom_id"] for r in results] == ["req-0", "req-1", "req-2"]
    assert results[0]["response"]["status_code"] == 200
    assert 'You said: "question 0"' in results[0]["response"]["body"]["choices"][0][
        "message"]["content"]
    errors = [json.loads(x) for x in
              get(http, server, f"/files/{done['error_file_id']}/content").text.splitlines()]
    assert errors[0]["custom_id"] == "req-bad" and errors[0]["response"]["status_code"] == 400
    assert done["id"] in [b["id"] for b in get(http, server, "/batches").json()["data"]]
    # Embeddings batches are answered by the embeddings handler.
    emb = upload(http, server, "emb.jsonl", jsonl([{
        "custom_id": "e", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4}}]))
    eb = post(http, server, "/batches", json={"input_file_id": emb["id"],
                                              "endpoint": "/v1/embeddings",
                                              "completion_window": "24h"}).json()
    cancelled = post(http, server, f"/batches/{eb['id']}/cancel").json()
    assert cancelled["status"] == "cancelling"
    assert get(http, server, f"/batches/{eb['id']}").json()["status"] == "cancelled"
    server.configure(job_seconds=0)
    eb2 = post(http, server, "/batches", json={"input_file_id": emb["id"],
                                               "endpoint": "/v1/embeddings",
                                               "completion_window": "24h"}).json()
    assert eb2["status"] == "completed"
    line = json.loads(get(http, server, f"/files/{eb2['output_file_id']}/content").content)
    assert len(line["response"]["body"]["data"][0]["embedding"]) == 4


def test_fine_tuning_job_events_and_checkpoints(server, http):
    missing = post(http, server, "/fine_tuning/jobs",
                   json={"model": "gpt-4o-mini", "training_file": "file-nope"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "training_file"
    train = upload(http, server, "train.jsonl", b'{"messages": []}\n' * 20, "fine-tune")
    job = post(http, server, "/fine_tuning/jobs", json={
        "model": "gpt-4o-mini", "training_file": train["id"], "suffix": "demo",
        "method": {"type": "supervised",
                   "supervised": {"hyperparameters": {"n_epochs": 4}}}}).json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files" and job["hyperparameters"]["n_epochs"] == 4
    done = wait_for(lambda: get(http, server, f"/fine_tuning/jobs/{job['id']}").json(),
                    lambda j: j["status"] == "succeeded")
    assert done["status"] == "succeeded" and done["fine_tuned_model"].startswith("ft:gpt-4o-mini")
    assert get(http, server, f"/models/{done['fine_tuned_model']}").status_code == 200
    events = get(http, server, f"/fine_tuning/jobs/{job['id']}/events",
                 params={"limit": 3}).json()
    assert len(events["data"]) == 3 and events["has_more"]
    assert events["data"][0]["message"] == "The job has successfully completed"
    rest = get(http, server, f"/fine_tuning/jobs/{job['id']}/events",
               params={"limit": 100, "after": events["data"][-1]["id"]}).json()
    assert rest["data"][-1]["message"].startswith("Validating training file")
    assert sum(1 for e in events["data"] + rest["data"] if e["type"] == "metrics") == 4
    checkpoints = get(http, server, f"/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert len(checkpoints["data"]) == 4
    assert checkpoints["data"][0]["fine_tuned_model_checkpoint"].endswith(
        f"ckpt-step-{checkpoints['data'][0]['step_number']}")
    listed = get(http, server, "/fine_tuning/jobs").json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    # Pause freezes the job, resume continues it, cancel ends it.
    server.configure(job_seconds=30)
    slow = post(http, server, "/fine_tuning/jobs",
                json={"model": "gpt-4o-mini", "training_file": train["id"]}).json()
    assert post(http, server, f"/fine_tuning/jobs/{slow['id']}/pause").json()["status"] == \
        "paused"
    assert post(http, server, f"/fine_tuning/jobs/{slow['id']}/pause").status_code == 400
    assert post(http, server, f"/fine_tuning/jobs/{slow['id']}/resume").json()["status"] == \
        "validating_files"
    assert post(http, server, f"/fine_tuning/jobs/{slow['id']}/cancel").json()["status"] == \
        "cancelled"
    assert post(http, server, f"/fine_tuning/jobs/{slow['id']}/cancel").status_code == 400


# -- vector stores, videos, containers -------------------------------------------------------------


def test_vector_stores_files_and_search(server, http):
    doc = upload(http, server, "notes.txt", b"the lighthouse keeper feeds the cat", "assistants")
    store = post(http, server, "/vector_stores", json={"name": "kb", "file_ids": [doc["id"]]}
                 ).json()
    assert store["object"] == "vector_store" and store["file_counts"]["completed"] == 1
    assert get(http, server, f"/vector_stores/{store['id']}").json()["name"] == "kb"
    files = get(http, server, f"/vector_stores/{store['id']}/files").json()
    assert [f["id"] for f in files["data"]] == [doc["id"]]
    content = get(http, server, f"/vector_stores/{store['id']}/files/{doc['id']}/content").json()
    assert content["data"][0]["text"] == "the lighthouse keeper feeds the cat"
    hits = post(http, server, f"/vector_stores/{store['id']}/search",
                json={"query": "lighthouse cat"}).json()
    assert hits["data"][0]["file_id"] == doc["id"] and hits["data"][0]["score"] > 0
    batch = post(http, server, f"/vector_stores/{store['id']}/file_batches",
                 json={"file_ids": [doc["id"]]}).json()
    assert batch["object"] == "vector_store.files_batch" and batch["status"] == "completed"
    assert get(http, server, f"/vector_stores/{store['id']}/file_batches/{batch['id']}/files"
               ).json()["data"][0]["id"] == doc["id"]
    assert post(http, server, "/vector_stores", json={"file_ids": ["file-nope"]}
                ).status_code == 400
    gone = http.delete(server.url + f"/vector_stores/{store['id']}", timeout=10).json()
    assert gone["deleted"] is True
    assert get(http, server, f"/vector_stores/{store['id']}").status_code == 404


def test_video_lifecycle_and_content(server, http):
    video = post(http, server, "/videos", json={"model": "sora-2", "prompt": "a cat",
                                                "seconds": "4"}).json()
    assert video["status"] == "queued" and video["object"] == "video"
    assert get(http, server, f"/videos/{video['id']}/content").status_code == 400
    done = wait_for(lambda: get(http, server, f"/videos/{video['id']}").json(),
                    lambda v: v["status"] == "completed")
    assert done["progress"] == 100
    content = get(http, server, f"/videos/{video['id']}/content")
    assert content.headers["content-type"] == "video/mp4" and content.content[4:8] == b"ftyp"
    thumb = get(http, server, f"/videos/{video['id']}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/webp" and thumb.content[8:12] == b"WEBP"
    remix = post(http, server, f"/videos/{video['id']}/remix", json={"prompt": "a dog"}).json()
    assert remix["remixed_from_video_id"] == video["id"]
    assert video["id"] in [v["id"] for v in get(http, server, "/videos").json()["data"]]
    assert http.delete(server.url + f"/videos/{video['id']}", timeout=10).json()["deleted"]


def test_containers_and_their_files(server, http):
    source = upload(http, server, "data.csv", b"a,b\n1,2\n", "user_data")
    box = post(http, server, "/containers", json={"name": "box", "file_ids": [source["id"]]}
               ).json()
    assert box["object"] == "container" and box["status"] == "running"
    files = get(http, server, f"/containers/{box['id']}/files").json()["data"]
    assert files[0]["path"] == "/mnt/data/data.csv" and files[0]["bytes"] == 8
    made = post(http, server, f"/containers/{box['id']}/files",
                files={"file": ("run.py", b"print(42)\n")}).json()
    assert made["object"] == "container.file" and made["container_id"] == box["id"]
    content = get(http, server, f"/containers/{box['id']}/files/{made['id']}/content")
    assert content.content == b"print(42)\n"
    assert get(http, server, f"/containers/{box['id']}/files/{made['id']}").json() == made
    assert http.delete(server.url + f"/containers/{box['id']}/files/{made['id']}",
                       timeout=10).json()["deleted"]
    assert http.delete(server.url + f"/containers/{box['id']}", timeout=10).json() == {
        "id": box["id"], "object": "container.deleted", "deleted": True}


# -- bounds --------------------------------------------------------------------------------------


def test_huge_values_answer_quickly_with_bounded_memory(server, http):
    before = rss_kb(server.pid)
    started = time.perf_counter()
    # The hardening finding: a legacy fine-tune with n_epochs near 10**9, its events streamed.
    job = post(http, server, "/fine-tunes", json={"training_file": "file-x",
                                                  "n_epochs": 999_999_999}).json()
    assert job["hyperparams"]["n_epochs"] == 50
    streamed = get(http, server, f"/fine-tunes/{job['id']}/events", params={"stream": "true"})
    assert streamed.text.count("data: ") <= 60
    train = upload(http, server, "t.jsonl", b'{"messages": []}\n', "fine-tune")
    server.configure(job_seconds=0)
    ftjob = post(http, server, "/fine_tuning/jobs", json={
        "model": "gpt-4o-mini", "training_file": train["id"],
        "hyperparameters": {"n_epochs": 10 ** 12}}).json()
    assert ftjob["hyperparameters"]["n_epochs"] == 50 and ftjob["status"] == "succeeded"
    events = get(http, server, f"/fine_tuning/jobs/{ftjob['id']}/events",
                 params={"limit": 10 ** 9}).json()
    assert 50 < len(events["data"]) <= 100 and not events["has_more"]
    chat = post(http, server, "/chat/completions", stream=True,
                headers={"X-Standin-Events": str(10 ** 9)},
                json={"model": "gpt-4o-mini", "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]})
    assert 900 < chat.text.count("data: ") <= 1001
    images = named_events(post(http, server, "/images/generations", stream=True, json={
        "model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 10 ** 9,
        "size": "100000x100000"}))
    assert len(images) == 4
    png = base64.b64decode(images[-1][1]["b64_json"])
    assert int.from_bytes(png[16:20], "big") <= 1536
    speech = post(http, server, "/audio/speech", json={
        "model": "tts-1", "voice": "x", "input": "word " * 800, "response_format": "wav"})
    assert len(speech.content) <= 24000 * 2 * 20 + 44
    for path, body in (("/chat/completions", {"model": "m", "n": 10 ** 9,
                                              "messages": [{"role": "user", "content": "x"}]}),
                       ("/completions", {"model": "m", "prompt": ["a"] * 2000, "n": 100}),
                       ("/embeddings", {"model": "m", "input": "x", "dimensions": 10 ** 9}),
                       ("/embeddings", {"model": "m", "input": ["x"] * 3000}),
                       ("/images/generations", {"prompt": "x", "n": 10 ** 6})):
        assert post(http, server, path, json=body).status_code == 400, path
    big = upload(http, server, "big.jsonl", b"{}\n" * 60_000)
    failed = post(http, server, "/batches", json={"input_file_id": big["id"],
                                                  "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"}).json()
    assert failed["status"] == "failed"
    assert failed["errors"]["data"][0]["code"] == "too_many_requests"
    assert len(get(http, server, "/batches", params={"limit": 10 ** 9}).json()["data"]) <= 100
    elapsed = time.perf_counter() - started
    assert elapsed < 15, elapsed
    assert rss_kb(server.pid) - before < 300_000  # KiB
    with pytest.raises(Exception, match="between 1 and 1000"):
        server.configure(events=10 ** 9)


# -- today's SDK ---------------------------------------------------------------------------------


def test_sdk_responses_round_trip(server, client):
    made = client.responses.create(model="gpt-4o-mini", input="Hello SDK")
    assert 'You said: "Hello SDK"' in made.output_text
    assert made.usage.input_tokens_details.cached_tokens == 0
    assert made.usage.output_tokens_details.reasoning_tokens == 0
    events = list(client.responses.create(model="gpt-4o-mini", input="Hello SDK", stream=True,
                                          previous_response_id=made.id))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.usage.input_tokens_details.cached_tokens > 0
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        final.output_text
    with client.responses.stream(model="gpt-4o-mini", input="helper stream") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == text
    assert client.responses.retrieve(made.id).output_text == made.output_text
    assert client.responses.input_items.list(made.id).data[0].content[0].text == "Hello SDK"
    tool = client.responses.create(model="gpt-4o", input="weather in Lima?", tools=[WEATHER])
    assert tool.output[0].type == "function_call"
    assert json.loads(tool.output[0].arguments) == {"location": "Lima"}
    assert client.responses.input_tokens.count(model="gpt-4o", input="a b").input_tokens > 0
    client.responses.delete(made.id)
    with pytest.raises(Exception) as info:
        client.responses.retrieve(made.id)
    assert getattr(info.value, "status_code", None) == 404


def test_sdk_speech_and_transcription_stream(server, client):
    wav = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello SDK",
                                     response_format="wav")
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getnframes() > 0
    mp3 = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello SDK")
    assert mp3.response.headers["content-type"] == "audio/mpeg"
    events = list(client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", b"RIFF" + bytes(1000)), stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].usage.total_tokens > 0
    image = client.images.generate(model="gpt-image-1", prompt="a cat")
    assert image.data[0].url is None and image.usage.total_tokens > 0


def test_sdk_batches_and_fine_tuning(server, client):
    line = {"custom_id": "one", "method": "POST", "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": "batched"}}
    source = client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/responses",
                                  completion_window="24h")
    assert batch.status == "validating"
    done = wait_for(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    assert done.request_counts.completed == 1 and done.request_counts.failed == 0
    result = json.loads(client.files.content(done.output_file_id).text)
    assert result["response"]["body"]["object"] == "response"
    assert batch.id in [b.id for b in client.batches.list()]
    train = client.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id)
    done_job = wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id),
                        lambda j: j.status == "succeeded")
    assert done_job.fine_tuned_model
    assert client.fine_tuning.jobs.list_events(job.id, limit=2).data[0].message
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number > 0
    up = client.uploads.upload_file_chunked(file=b"chunked bytes", filename="c.jsonl",
                                            bytes=13, mime_type="text/jsonl", purpose="batch",
                                            part_size=5)
    assert client.files.content(up.file.id).content == b"chunked bytes"


# -- fast mode and reset ---------------------------------------------------------------------------


def test_fast_mode_finishes_jobs_at_once_and_reset_clears_stores():
    with StandinServer(fast=True) as srv:
        with requests.Session() as http:
            http.trust_env = False
            http.headers.update(AUTH)
            source = upload(http, srv, "in.jsonl", jsonl([{
                "custom_id": "a", "method": "POST", "url": "/v1/moderations",
                "body": {"input": "hello"}}]))
            batch = post(http, srv, "/batches", json={"input_file_id": source["id"],
                                                      "endpoint": "/v1/moderations",
                                                      "completion_window": "24h"}).json()
            assert batch["status"] == "completed" and srv.config()["job_seconds"] == 0
            made = post(http, srv, "/responses", json={"model": "gpt-4o", "input": "x"}).json()
            assert srv.requests() == []  # fast mode keeps no log
            srv.reset()
            assert get(http, srv, f"/responses/{made['id']}").status_code == 404
            assert get(http, srv, f"/batches/{batch['id']}").status_code == 404
