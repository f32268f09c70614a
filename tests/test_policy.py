"""The site's pre-call policy (``BEFORE_CALL``, ``signals.before_call``): it sees every call
before anything is sent and may refuse it; a refusal is a recorded 403 and never reaches the
upstream (the stand-in logs every request it gets). Over HTTP on the live server, the Python
API (sync and async), a background call with a real Celery worker, and under a real ASGI
server."""

import asyncio
import json
import logging
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import Group

import openai_django
from openai_django import policy, signals
from openai_django.errors import InvalidRequest
from openai_django.models import Call
from openai_django.policy import CallRequest, Refused
from tests import site_policy
from tests.fixtures.celery_worker import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def chat(model="gpt-4o-mini", text="Say hello to Ada", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def use_policy(settings, hook):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "BEFORE_CALL": hook}


def assert_refused(response, code="refused_by_policy", status=403):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.outcome == Call.Outcome.REJECTED and call.status == Call.Status.FAILED
    assert call.response_status == status and call.error["code"] == code
    return error, call


@pytest.fixture
def interns(user):
    group = Group.objects.create(name="interns")
    user.groups.add(group)
    return group


def test_the_example_policy_refuses_by_group_model_tokens_and_words(http, upstream, settings,
                                                                     user, interns):
    use_policy(settings, "openai_django.policy.example_policy")
    url = f"{http.base}/chat/completions"

    error, call = assert_refused(http.post(url, json=chat("gpt-4o")))
    assert error["message"] == "The model gpt-4o is not available to the group interns."
    assert error["type"] == "invalid_request_error"
    # Recorded under the caller, with what was asked, and nothing was sent upstream.
    assert call.user == user and call.api_key is not None and call.model == "gpt-4o"
    assert call.request_body["model"] == "gpt-4o"
    assert upstream.requests() == []

    error, _ = assert_refused(http.post(url, json=chat(max_completion_tokens=5000)))
    assert error["message"] == "At most 4000 output tokens per call."
    error, _ = assert_refused(http.post(url, json=chat(text="my Password is hunter2")))
    assert "password" in error["message"]
    assert upstream.requests() == []

    allowed = http.post(url, json=chat("gpt-4o-mini", max_completion_tokens=50))
    assert allowed.status_code == 200, allowed.text
    assert [r["body"]["model"] for r in upstream.requests()] == ["gpt-4o-mini"]
    assert Call.objects.get(pk=allowed.headers["X-Call-Id"]).outcome == Call.Outcome.OK

    # Out of the group: the model is no longer refused.
    user.groups.clear()
    assert http.post(url, json=chat("gpt-4o")).status_code == 200
    assert len(upstream.requests()) == 2


def test_a_signal_receiver_refuses_and_the_setting_runs_first(http, upstream, settings):
    use_policy(settings, "tests.site_policy.spy")
    site_policy.SEEN.clear()
    seen = []

    def receiver(sender, request, **kwargs):
        seen.append((sender, request.model))
        if request.model == "gpt-4.1":
            return "gpt-4.1 is for the research team."
        return None

    signals.before_call.connect(receiver)
    try:
        response = http.post(f"{http.base}/chat/completions", json=chat("gpt-4.1"))
        error, _ = assert_refused(response)
        assert error["message"] == "gpt-4.1 is for the research team."
        assert http.post(f"{http.base}/chat/completions", json=chat()).status_code == 200
    finally:
        signals.before_call.disconnect(receiver)
    assert seen == [(CallRequest, "gpt-4.1"), (CallRequest, "gpt-4o-mini")]
    assert [s["model"] for s in site_policy.SEEN] == ["gpt-4.1", "gpt-4o-mini"]
    assert len(upstream.requests()) == 1
    # Disconnected: nothing refuses any more.
    assert http.post(f"{http.base}/chat/completions", json=chat("gpt-4.1")).status_code == 200


def test_the_hook_sees_the_call(http, upstream, settings, user, interns):
    use_policy(settings, ["tests.site_policy.spy"])
    site_policy.SEEN.clear()
    response = http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "max_tokens": 77, "stream": True,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [
                         {"type": "text", "text": "What is this?"},
                         {"type": "image_url",
                          "image_url": {"url": "data:image/png;base64,AA"}}]}]})
    assert response.status_code == 200
    response.close()
    [seen] = site_policy.SEEN
    assert seen["operation"] == "createChatCompletion" and seen["model"] == "gpt-4o-mini"
    assert seen["user"] == user and seen["api_key"].user == user
    assert seen["groups"] == {"interns"} and seen["max_tokens"] == 77
    assert seen["text"] == "Be brief.\nWhat is this?"  # the data URL is not text
    assert seen["mode"] == Call.Mode.STREAM and seen["stream"] is True
    assert seen["source"] == Call.Source.HTTP and seen["path"] == "/chat/completions"


def test_a_hook_raises_a_refusal_or_another_gateway_error(http, upstream, settings):
    use_policy(settings, "tests.site_policy.raises_refused")
    error, _ = assert_refused(http.post(f"{http.base}/chat/completions", json=chat()),
                              code="closed_today")
    assert error["message"] == "No calls on Sundays."

    use_policy(settings, "tests.site_policy.bounds_tokens")
    response = http.post(f"{http.base}/chat/completions", json=chat(max_tokens=500))
    error, _ = assert_refused(response, code=None, status=400)
    assert error["param"] == "max_tokens"
    assert http.post(f"{http.base}/chat/completions", json=chat(max_tokens=50)).ok
    assert len(upstream.requests()) == 1


@pytest.mark.parametrize("hook", ["tests.site_policy.broken",
                                  "tests.site_policy.answers_nonsense"])
def test_a_failing_hook_lets_nothing_through(http, upstream, settings, caplog, hook):
    use_policy(settings, hook)
    with caplog.at_level(logging.ERROR, logger="openai_django.policy"):
        response = http.post(f"{http.base}/chat/completions", json=chat())
    error, call = assert_refused(response, code="policy_error", status=500)
    assert error["type"] == "server_error"
    assert "the policy's own database is down" not in error["message"]  # only in the log
    assert any("pre-call policy failed" in r.getMessage() for r in caplog.records)
    assert upstream.requests() == []


def test_an_unimportable_hook_is_a_system_check_error(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.OPENAI_DJANGO = {"BEFORE_CALL": "tests.site_policy.no_such_policy"}
    with pytest.raises(SystemCheckError, match="openai_django.E032"):
        call_command("check")


def test_the_python_api_is_checked(upstream, settings, user, interns):
    use_policy(settings, "openai_django.policy.example_policy")
    with pytest.raises(Refused) as refused:
        openai_django.create("createChatCompletion", user=user, **chat("gpt-4o"))
    call = refused.value.call
    assert call.outcome == Call.Outcome.REJECTED and call.source == Call.Source.PYTHON
    assert call.user == user and call.api_key is None and call.response_status == 403
    assert Call.objects.get(pk=call.pk).error["code"] == "refused_by_policy"
    assert upstream.requests() == []
    data, call = openai_django.create("createChatCompletion", user=user, **chat())
    assert data["object"] == "chat.completion" and call.outcome == Call.Outcome.OK
    assert len(upstream.requests()) == 1


def test_the_async_python_api_is_checked(upstream, settings, user, interns, db_pool):
    use_policy(settings, "openai_django.policy.example_policy")

    async def main():
        with pytest.raises(Refused) as refused:
            await openai_django.acreate("createChatCompletion", user=user, **chat("gpt-4o"))
        ok = await openai_django.acreate("createChatCompletion", user=user, **chat())
        return refused.value.call, ok.call

    refused_call, ok_call = asyncio.run(main())
    assert Call.objects.get(pk=refused_call.pk).outcome == Call.Outcome.REJECTED
    assert Call.objects.get(pk=ok_call.pk).outcome == Call.Outcome.OK
    assert [r["body"]["model"] for r in upstream.requests()] == ["gpt-4o-mini"]


@pytest.mark.slow
def test_a_background_call_is_checked_when_submitted(upstream, settings, user, interns,
                                                     celery_worker_factory, media_root):
    use_policy(settings, "openai_django.policy.example_policy")
    worker = celery_worker_factory()
    with pytest.raises(Refused) as refused:
        openai_django.submit("createChatCompletion", user=user, **chat("gpt-4o"))
    rejected = refused.value.call
    allowed = openai_django.submit("createChatCompletion", user=user, **chat())
    assert allowed.status == Call.Status.QUEUED
    done = wait_for(lambda: Call.objects.filter(pk=allowed.pk,
                                                status=Call.Status.SUCCEEDED).first(),
                    message="the allowed background call to be performed")
    assert done.mode == Call.Mode.ASYNC
    rejected = Call.objects.get(pk=rejected.pk)
    assert rejected.outcome == Call.Outcome.REJECTED and rejected.mode == Call.Mode.ASYNC
    assert rejected.payload is None  # never queued
    # The worker performed the allowed call only: the refused one, submitted first, would
    # have been performed first (one worker process, one message at a time) had it been queued.
    assert [r["body"]["model"] for r in upstream.requests()] == ["gpt-4o-mini"]
    assert worker.running


# -- under a real ASGI server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_asgi_site(asgi_upstream):
    from tests.fixtures.asgi import AsgiSite

    site = AsgiSite(asgi_upstream.url, overrides={"BEFORE_CALL": "tests.site_policy.refuse_gpt41"})
    server = site.start_server("uvicorn")
    yield site, server
    site.close()


def post(server, site, path, body):
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={**site.headers,
                                              "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


@pytest.mark.slow
def test_the_hook_runs_under_asgi(policy_asgi_site, asgi_upstream):
    site, server = policy_asgi_site
    asgi_upstream.clear_requests()
    status, headers, body = post(server, site, "/v1/chat/completions", chat("gpt-4.1"))
    assert status == 403, body
    assert body["error"]["code"] == "refused_by_policy"
    assert body["error"]["message"] == "The model gpt-4.1 is not allowed on this site."
    record = site.call(headers["X-Call-Id"])
    assert record["outcome"] == "rejected" and record["model"] == "gpt-4.1"
    assert asgi_upstream.requests() == []
    status, headers, body = post(server, site, "/v1/chat/completions", chat())
    assert status == 200 and body["object"] == "chat.completion"
    assert [r["body"]["model"] for r in asgi_upstream.requests()] == ["gpt-4o-mini"]


def test_no_hook_costs_no_call_request(settings):
    """With nothing configured, check() returns before building anything (the fast path)."""
    settings.OPENAI_DJANGO = {}
    assert policy.hooks() == ()
    assert not signals.before_call.receivers
    policy.check(object())  # not even looked at


def test_a_refusal_without_reason_has_the_default_message():
    with pytest.raises(Refused, match="refused by the site's policy"):
        policy._verdict(False, None)
    with pytest.raises(Refused, match="^Too long$"):
        policy._verdict("Too long", None)
    assert policy._verdict(None, None) is None and policy._verdict(True, None) is None
    assert issubclass(Refused, openai_django.errors.PermissionDenied)
    assert Refused().status_code == 403 and Refused().code == "refused_by_policy"
    assert not issubclass(InvalidRequest, Refused)
