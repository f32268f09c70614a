"""Upstream failures: passed through when the upstream answered, 502/504 when it did not."""

import socket

import pytest

from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def call_of(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_upstream_error_status_and_body_pass_through(http, upstream, status):
    upstream.fault(path="/v1/chat/completions", kind="status", status=status, retry_after=3,
                   body={"error": {"message": f"upstream says {status}", "type": "x",
                                   "param": None, "code": "c"}})
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"upstream says {status}"
    assert response.headers["Retry-After"] == "3"
    call = call_of(response)
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.UPSTREAM_ERROR
    assert call.response_status == status
    assert call.error["message"] == f"upstream says {status}"
    assert call.response_headers["retry-after"] == "3"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_upstream_is_502_and_recorded(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable" and error["type"] == "upstream_error"
    call = call_of(response)
    assert call.status == Call.Status.FAILED and call.outcome == Call.Outcome.UNREACHABLE
    assert call.finished_at is not None and call.error["code"] == "upstream_unreachable"
    assert call.request_body == CHAT


def test_upstream_timeout_is_504(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "READ_TIMEOUT": 0.5}
    upstream.fault(path="/v1/chat/completions", kind="delay", seconds=3)
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    call = call_of(response)
    assert call.outcome == Call.Outcome.TIMEOUT and call.status == Call.Status.FAILED


def test_connection_reset_is_502(http, upstream):
    upstream.fault(path="/v1/chat/completions", kind="reset")
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert call_of(response).outcome == Call.Outcome.UNREACHABLE
    # The pool recovers: the next call goes through.
    assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 200


def test_malformed_upstream_json_is_502(http, upstream):
    upstream.fault(path="/v1/embeddings", kind="malformed")
    response = http.post(f"{http.base}/embeddings",
                         json={"model": "text-embedding-ada-002", "input": "x"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    call = call_of(response)
    assert call.outcome == Call.Outcome.BAD_RESPONSE and call.status == Call.Status.FAILED
    assert call.response_status == 200


def test_failing_signal_receiver_does_not_lose_the_answer(http, upstream):
    from openai_django.signals import call_finished

    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    call_finished.connect(broken, dispatch_uid="test-broken")
    try:
        response = http.post(f"{http.base}/chat/completions", json=CHAT)
    finally:
        call_finished.disconnect(dispatch_uid="test-broken")
    assert response.status_code == 200
    assert call_of(response).status == Call.Status.SUCCEEDED


def test_signals_carry_the_call(http, upstream):
    from openai_django.signals import call_failed, call_finished

    seen = []
    call_finished.connect(lambda call, **kw: seen.append(("ok", call.pk)), weak=False,
                          dispatch_uid="t-ok")
    call_failed.connect(lambda call, **kw: seen.append(("failed", call.pk)), weak=False,
                        dispatch_uid="t-failed")
    try:
        ok = http.post(f"{http.base}/chat/completions", json=CHAT)
        upstream.fault(path="/v1/chat/completions", kind="status", status=500)
        bad = http.post(f"{http.base}/chat/completions", json=CHAT)
    finally:
        call_finished.disconnect(dispatch_uid="t-ok")
        call_failed.disconnect(dispatch_uid="t-failed")
    assert [s[0] for s in seen] == ["ok", "failed"]
    assert str(seen[0][1]) == ok.headers["X-Call-Id"]
    assert str(seen[1][1]) == bad.headers["X-Call-Id"]
