"""Many upstreams: routing by model and pattern, rename, fallbacks with every attempt
recorded, the circuit breaker, objects read back from the upstream that holds them.

Three stand-in upstreams on loopback, each with a key of its own: ``a`` (the session's
stand-in, the default), ``b`` and ``c`` (the ``many`` fixture, tests/fixtures/upstreams.py).
"""

import asyncio
import time

import pytest

from openai_django import api
from openai_django.breaker import breaker
from openai_django.models import Call, UpstreamHealth
from tests.fixtures.upstreams import KEY_A, KEY_B

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello"}]


def chat(http, model, **extra):
    return http.post(f"{http.base}/chat/completions",
                     json={"model": model, "messages": HELLO, **extra})


def last_call(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def posted(server, path="/v1/chat/completions"):
    return [r for r in server.requests() if r["path"] == path]


def test_routes_by_model_name_and_pattern_with_rename(http, many):
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200, response.text
    assert last_call(response).upstream == "a"
    response = chat(http, "local/qwen2.5-7b")
    assert response.status_code == 200, response.text
    call = last_call(response)
    assert call.upstream == "b" and call.model == "local/qwen2.5-7b"
    assert call.upstream_attempts is None
    sent = posted(many["b"])[-1]
    assert sent["body"]["model"] == "qwen2.5-7b"  # the pattern's rename
    assert sent["headers"]["authorization"].endswith(KEY_B[-4:])  # b's key, from the env
    assert call.request_body["model"] == "local/qwen2.5-7b"  # the record keeps the client's
    assert len(posted(many["a"])) == 1 and not posted(many["c"])
    # An exact name on b; a model nobody lists goes to the default (a).
    assert last_call(chat(http, "llama-3")).upstream == "b"
    assert last_call(chat(http, "mystery-model")).upstream == "a"


def test_the_upstream_key_and_headers_are_never_recorded(http, many):
    response = chat(http, "llama-3")
    call = last_call(response)
    assert KEY_B not in str(call.request_headers) and KEY_B not in str(call.response_headers)
    assert "x-site" not in {k.lower() for k in call.request_headers}


def test_fallback_on_429_records_every_attempt(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    response = chat(http, "gpt-4o")
    assert response.status_code == 200, response.text
    call = last_call(response)
    assert call.upstream == "b" and call.status == Call.Status.SUCCEEDED
    first, second = call.upstream_attempts
    assert first["upstream"] == "a" and first["status"] == 429
    assert first["outcome"] == "http_error" and first["ms"] >= 0
    assert second == {**second, "upstream": "b", "status": 200, "outcome": "ok"}
    assert posted(many["b"])[-1]["body"]["model"] == "gpt-4o"


def test_fallback_on_500_and_on_reset_to_the_third(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=500, times=1)
    many["b"].fault(path="/v1/chat/completions", kind="reset", times=1)
    response = chat(http, "gpt-4o")
    assert response.status_code == 200, response.text
    call = last_call(response)
    assert [a["upstream"] for a in call.upstream_attempts] == ["a", "b", "c"]
    assert call.upstream_attempts[0]["status"] == 500
    assert call.upstream_attempts[1]["outcome"] == "unreachable"
    assert call.upstream == "c"
    assert posted(many["c"])[-1]["body"]["model"] == "gpt-4o-on-c"  # c's rename


def test_the_last_upstreams_error_is_the_answer(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=503, times=1)
    many["c"].fault(path="/v1/chat/completions", kind="status", status=500, times=1)
    response = chat(http, "gpt-4.1-mini")
    assert response.status_code == 500
    call = last_call(response)
    assert call.upstream == "c" and call.status == Call.Status.FAILED
    assert [a["status"] for a in call.upstream_attempts] == [503, 500]
    assert not posted(many["b"])


def test_no_fallback_for_an_operation_not_safe_to_repeat(http, many):
    """Creating a fine-tuning job may have happened upstream when it answered 500: never sent
    twice. A 429 refused it: safe to send on."""
    many["a"].fault(path="/v1/files", kind="status", status=500, times=1)
    upload = http.post(f"{http.base}/files", files={"file": ("t.jsonl", b'{"a": 1}\n')},
                       data={"purpose": "fine-tune"})
    assert upload.status_code == 500
    assert last_call(upload).upstream_attempts is None
    body = {"model": "gpt-4o", "training_file": "file-abc"}
    many["a"].fault(path="/v1/fine_tuning/jobs", kind="status", status=500, times=1)
    response = http.post(f"{http.base}/fine_tuning/jobs", json=body)
    assert response.status_code == 500
    assert last_call(response).upstream == "a"
    assert not posted(many["b"], "/v1/fine_tuning/jobs")
    many["a"].fault(path="/v1/fine_tuning/jobs", kind="status", status=429, times=1)
    response = http.post(f"{http.base}/fine_tuning/jobs", json=body)
    call = last_call(response)
    assert call.upstream == "b", call.upstream_attempts
    assert [a["status"] for a in call.upstream_attempts][0] == 429


def test_a_stream_falls_back_before_its_first_event_only(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    response = chat(http, "gpt-4o", stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    call = _finished(response)
    assert call.upstream == "b" and call.outcome == Call.Outcome.OK
    # Broken off after two events: the client had them; the stream is not sent elsewhere.
    many["b"].clear_requests()
    many["a"].fault(path="/v1/chat/completions", kind="cut", after=2, times=1)
    response = chat(http, "gpt-4o", stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert b"[DONE]" not in lines[-1]
    call = _finished(response)
    assert call.upstream == "a" and call.outcome == Call.Outcome.STREAM_BROKEN
    assert call.upstream_attempts is None
    assert not posted(many["b"]) and not posted(many["c"])


def _finished(response, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        call = last_call(response)
        if call.is_finished or time.monotonic() > deadline:
            return call
        time.sleep(0.05)


def test_circuit_breaker_opens_skips_and_closes(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=502, times=3)
    for _ in range(3):
        assert chat(http, "gpt-4o").status_code == 200
    breaker.flush()  # the shared state is written by the breaker's thread
    health = UpstreamHealth.objects.get(name="a")
    assert health.failures == 3 and health.opened_until is not None
    many["a"].clear_requests()
    response = chat(http, "gpt-4o")
    call = last_call(response)
    assert call.upstream == "b"
    assert call.upstream_attempts[0] == {"upstream": "a", "model": "gpt-4o",
                                         "outcome": "skipped", "error": "circuit open"}
    assert not posted(many["a"])  # skipped, not asked
    # A model whose route has only a: still tried (no one else to ask).
    assert last_call(chat(http, "gpt-4o-mini")).upstream == "a"
    time.sleep(1.1)  # the cool-down
    response = chat(http, "gpt-4o")
    assert last_call(response).upstream == "a"  # half-open: tried, answered
    breaker.flush()
    health.refresh_from_db()
    assert health.failures == 0 and health.opened_until is None
    assert health.times_opened == 1 and health.last_success_at is not None


def test_files_are_read_back_from_the_upstream_that_holds_them(http, many, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "DEFAULT_UPSTREAM": "b"}
    upload = http.post(f"{http.base}/files", files={"file": ("d.jsonl", b'{"x": 1}\n')},
                       data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    assert last_call(upload).upstream == "b"
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "DEFAULT_UPSTREAM": "a"}
    content = http.get(f"{http.base}/files/{file_id}/content")
    assert content.status_code == 200 and content.content == b'{"x": 1}\n'
    assert last_call(content).upstream == "b"
    assert http.get(f"{http.base}/files/{file_id}").json()["id"] == file_id
    listing = http.get(f"{http.base}/files")  # no object: the default
    assert last_call(listing).upstream == "a"
    assert file_id not in {f["id"] for f in listing.json()["data"]}


def test_async_python_api_routes_and_falls_back(many, user):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=500, times=1)

    async def go():
        return await api.acreate("createChatCompletion", model="gpt-4o", messages=HELLO,
                                 user=user)

    result = asyncio.run(go())
    call = Call.objects.get(pk=result.call.pk)
    assert call.upstream == "b" and [a["upstream"] for a in call.upstream_attempts] == \
        ["a", "b"]
    result = asyncio.run(api.acreate("createChatCompletion", model="local/x", messages=HELLO,
                                     user=user))
    assert Call.objects.get(pk=result.call.pk).upstream == "b"
    assert posted(many["b"])[-1]["body"]["model"] == "x"


def test_today_sdk_through_routing_and_fallback(sdk, many):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    completion = sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert completion.choices[0].message.content
    call = Call.objects.order_by("-created").first()
    assert call.upstream == "b"
    stream = sdk.chat.completions.create(model="local/m", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert Call.objects.order_by("-created").first().upstream == "b"


def test_single_base_url_is_the_default_upstream(http, upstream):
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    assert last_call(response).upstream == "default"
    assert last_call(response).upstream_attempts is None


def test_admin_shows_each_upstreams_health_and_closes_a_circuit(http, many, admin_client):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=500, times=3)
    for _ in range(3):
        assert chat(http, "gpt-4o").status_code == 200
    page = admin_client.get("/admin/openai_django/call/upstreams/")
    assert page.status_code == 200
    html = page.content.decode()
    row_a = html.split('data-upstream="a"')[1].split("</tr>")[0]
    row_b = html.split('data-upstream="b"')[1].split("</tr>")[0]
    assert "open" in row_a and "HTTP 500" in row_a and "Close circuit" in row_a
    assert "closed" in row_b and "3 after a fallback" in row_b
    assert "sk-second" not in html and KEY_A not in html  # keys never shown
    assert admin_client.post("/admin/openai_django/call/upstreams/",
                             {"close": "a"}).status_code == 302
    breaker.flush()
    assert UpstreamHealth.objects.get(name="a").opened_until is None
    assert last_call(chat(http, "gpt-4o")).upstream == "a"
    fallen_back = Call.objects.filter(upstream="b").first()
    detail = admin_client.get(f"/admin/openai_django/call/{fallen_back.pk}/change/")
    assert "a 500 → b 200" in detail.content.decode()


def test_a_stream_broken_before_its_first_event_goes_to_the_next_upstream(http, many):
    many["a"].fault(path="/v1/chat/completions", kind="cut", after=0, times=1)
    response = chat(http, "gpt-4o", stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    call = _finished(response)
    assert call.upstream == "b" and call.outcome == Call.Outcome.OK
    assert [(a["upstream"], a["outcome"]) for a in call.upstream_attempts] == \
        [("a", "unreachable"), ("b", "ok")]
    assert "before the stream's first event" in call.upstream_attempts[0]["error"]
    assert len(call.stream_events) == len(lines) - 1


def test_async_streams_fall_back_before_the_first_event_only(many, user):
    async def events(model):
        stream = await api.acreate("createChatCompletion", model=model, messages=HELLO,
                                   user=user, stream=True)
        return [event async for event in stream], stream

    many["a"].fault(path="/v1/chat/completions", kind="cut", after=0, times=1)
    got, stream = asyncio.run(events("gpt-4o"))
    assert got and got[-1]["choices"][0]["finish_reason"] == "stop"
    call = Call.objects.get(pk=stream.call.pk)
    assert call.upstream == "b" and call.outcome == Call.Outcome.OK
    many["b"].clear_requests()
    many["a"].fault(path="/v1/chat/completions", kind="cut", after=2, times=1)
    got, stream = asyncio.run(events("gpt-4o"))
    call = Call.objects.get(pk=stream.call.pk)
    assert call.upstream == "a" and call.outcome == Call.Outcome.STREAM_BROKEN
    assert not posted(many["b"])


def test_an_object_no_call_created_is_looked_for_on_each_upstream(http, many):
    """A file put on b around the gateway (as a batch's output file is made by the upstream
    itself): a GET asks the default (404), then b; the next read goes straight to b."""
    import requests

    made = requests.post(f"{many['b'].url}/files", headers={"Authorization": f"Bearer {KEY_B}"},
                         files={"file": ("out.jsonl", b'{"ok": true}\n')},
                         data={"purpose": "batch"}, timeout=10)
    file_id = made.json()["id"]
    found = http.get(f"{http.base}/files/{file_id}")
    assert found.status_code == 200 and found.json()["id"] == file_id
    call = last_call(found)
    assert call.upstream == "b"
    assert [(a["upstream"], a["status"]) for a in call.upstream_attempts] == \
        [("a", 404), ("b", 200)]
    content = http.get(f"{http.base}/files/{file_id}/content")
    assert content.content == b'{"ok": true}\n'
    assert last_call(content).upstream == "b" and last_call(content).upstream_attempts is None
    missing = http.get(f"{http.base}/files/file-nowhere")
    assert missing.status_code == 404
    assert [a["upstream"] for a in last_call(missing).upstream_attempts] == ["a", "b", "c"]
    # Not a GET: never sent around (the default answers).
    deleted = http.delete(f"{http.base}/files/file-nowhere")
    assert deleted.status_code == 404 and last_call(deleted).upstream_attempts is None


def test_fallback_on_a_timeout_with_the_upstreams_own_read_timeout(http, many, settings):
    upstreams = dict(settings.OPENAI_DJANGO["UPSTREAMS"])
    upstreams["a"] = {**upstreams["a"], "read_timeout": 0.3}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "UPSTREAMS": upstreams}
    many["a"].fault(path="/v1/chat/completions", kind="delay", seconds=3, times=1)
    response = chat(http, "gpt-4o")
    assert response.status_code == 200
    call = last_call(response)
    assert call.upstream == "b"
    first = call.upstream_attempts[0]
    assert first["outcome"] == "timeout" and first["ms"] < 2500


def test_the_call_list_filters_by_upstream(http, many, admin_client):
    many["a"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    fell_back = last_call(chat(http, "gpt-4o"))
    on_b = last_call(chat(http, "local/x"))
    on_a = last_call(chat(http, "gpt-4o-mini"))
    page = admin_client.get("/admin/openai_django/call/?upstream=b").content.decode()
    assert str(fell_back.pk) in page and str(on_b.pk) in page and str(on_a.pk) not in page
    page = admin_client.get("/admin/openai_django/call/?upstream=~fallback").content.decode()
    assert str(fell_back.pk) in page and str(on_b.pk) not in page
    assert "after a fallback" in page


def test_the_export_says_which_upstream_answered(http, many, admin_client):
    import csv
    import io
    import json

    many["a"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    fell_back = last_call(chat(http, "gpt-4o"))
    response = admin_client.get("/admin/openai_django/call/export/", {"format": "csv"})
    rows = {r["id"]: r for r in csv.DictReader(
        io.StringIO(b"".join(response.streaming_content).decode()))}
    row = rows[str(fell_back.pk)]
    assert row["upstream"] == "b" and row["upstream_attempts"] == "a 429 -> b 200"
    response = admin_client.get("/admin/openai_django/call/export/", {"format": "jsonl"})
    records = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    record = next(r for r in records if r["id"] == str(fell_back.pk))
    assert record["upstream"] == "b"
