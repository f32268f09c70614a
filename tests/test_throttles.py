"""The site's DRF throttles at the gateway: ``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]`` (or
``OPENAI_DJANGO["THROTTLE_CLASSES"]``) hold for /v1/ calls over real HTTP, answered 429 in the
OpenAI shape with ``Retry-After``, recorded as rejected, and never sent upstream."""

import pytest
import requests

from openai_django.models import Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to Ada"}]}


@pytest.fixture
def user_rate(settings, monkeypatch):
    """``user_rate()``: the site's REST_FRAMEWORK throttles a user to 1 call a minute."""

    def configure(rate="1/min", classes=("rest_framework.throttling.UserRateThrottle",)):
        rates = {"user": rate, "anon": rate}
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                                   "DEFAULT_THROTTLE_CLASSES": list(classes),
                                   "DEFAULT_THROTTLE_RATES": rates}
        # DRF reads the rates into the class when it is imported, as a site's settings.py
        # has them by then; a test that changes them sets them there too.
        from rest_framework.throttling import SimpleRateThrottle

        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)

    return configure


def test_a_user_rate_throttle_lets_one_of_three_through(http, upstream, user, user_rate):
    user_rate()
    responses = [http.post(f"{http.base}/chat/completions", json=CHAT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 429, 429]
    for refused in responses[1:]:
        error = refused.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert "rate limit" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        call = Call.objects.get(pk=refused.headers["X-Call-Id"])
        assert call.outcome == Call.Outcome.REJECTED and call.response_status == 429
        assert call.user == user and call.model == "gpt-4o-mini"
        assert call.error["code"] == "rate_limit_exceeded"
    assert len(upstream.requests()) == 1
    assert Call.objects.filter(outcome=Call.Outcome.OK).count() == 1


def test_the_throttle_counts_per_user(http, upstream, gateway, other_api_key, user_rate):
    user_rate()
    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {other_api_key}"
    try:
        assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 200
        assert other.post(f"{gateway}/chat/completions", json=CHAT).status_code == 200
        assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 429
    finally:
        other.close()
    assert len(upstream.requests()) == 2


def test_throttle_classes_of_the_gateway_own(http, upstream, settings, user_rate):
    # The gateway's own list wins over DRF's defaults: none at all...
    user_rate()
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "THROTTLE_CLASSES": []}
    codes = [http.post(f"{http.base}/chat/completions", json=CHAT).status_code
             for _ in range(3)]
    assert codes == [200, 200, 200]
    # ...or its own, with DRF's defaults empty.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle"]}
    codes = [http.post(f"{http.base}/chat/completions", json=CHAT).status_code
             for _ in range(2)]
    assert codes == [200, 429]


def test_no_throttle_by_default(http, upstream):
    codes = [http.post(f"{http.base}/chat/completions", json=CHAT).status_code
             for _ in range(3)]
    assert codes == [200, 200, 200]


def test_a_refused_body_is_not_counted_and_a_throttled_stream_gets_429(http, upstream,
                                                                        user_rate):
    user_rate()
    bad = http.post(f"{http.base}/chat/completions", json={"model": "gpt-4o-mini"})
    assert bad.status_code == 400  # checked first, not counted
    stream = http.post(f"{http.base}/chat/completions", json={**CHAT, "stream": True})
    assert stream.status_code == 200 and b"[DONE]" in stream.content
    again = http.post(f"{http.base}/chat/completions", json={**CHAT, "stream": True})
    assert again.status_code == 429 and again.headers["Content-Type"] == "application/json"
    assert Call.objects.get(pk=again.headers["X-Call-Id"]).stream is False


def test_the_rest_log_is_throttled_too(http, upstream, user_rate):
    user_rate()
    assert http.get(f"{http.base}/calls").status_code == 200
    refused = http.get(f"{http.base}/calls")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
