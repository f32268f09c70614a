"""Budgets and rate limits through the live gateway (one process; the multi-process tests are
in test_limits_concurrent.py): refusals in the OpenAI shape, recorded, nothing sent upstream;
headers; charging from real usage (streams included); release on failure; the sweep; the
Python API and the management command."""

import datetime
import io
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

import openai_django
from openai_django import controls, limits
from openai_django.models import (
    Allowance,
    APIKey,
    BudgetReservation,
    BudgetWindow,
    Call,
    RateWindow,
    hash_key,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 20}


def key_of(raw):
    return APIKey.objects.get(hashed_key=hash_key(raw))


def chat_requests(upstream):
    return [r for r in upstream.requests() if r.get("path") == "/v1/chat/completions"]


@pytest.fixture(params=["db", "redis"])
def backend(request, settings):
    """Both rate-limit backends: the database, and real Redis (services)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RATE_LIMIT_REDIS_URL": url,
                                  "RATE_LIMIT_BACKEND": "redis"}
    return request.param


@pytest.fixture
def same_minute():
    """Rate limits count per clock minute: a test that expects several calls in one window
    starts more than 15 s before the minute ends."""
    import time

    into = time.time() % 60
    if into > 45:
        time.sleep(60 - into + 0.2)


def test_duration_format():
    assert limits.duration(0.02) == "20ms"
    assert limits.duration(1) == "1s"
    assert limits.duration(17.28) == "17.28s"
    assert limits.duration(360) == "6m0s"
    assert limits.duration(59.9996) == "1m0s"
    assert limits.duration(3725) == "1h2m5s"


def test_requests_per_minute_refused_with_openai_shape(same_minute, http, upstream, api_key,
                                                       backend):
    openai_django.set_rate_limit(key_of(api_key), requests_per_minute=2)
    first = http.post(f"{http.base}/chat/completions", json=CHAT)
    second = http.post(f"{http.base}/chat/completions", json=CHAT)
    upstream.clear_requests()
    third = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert first.status_code == second.status_code == 200
    # Successful answers carry the gateway's own counters.
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    # (No token limit is set here: the upstream's own -tokens headers pass through as before.)
    assert third.status_code == 429
    error = third.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert set(error) == {"message", "type", "param", "code"}
    assert "Limit 2, Used 2, Requested 1" in error["message"]
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    # Recorded as rejected, never sent.
    call = Call.objects.get(pk=third.headers["X-Call-Id"])
    assert call.outcome == Call.Outcome.REJECTED and call.response_status == 429
    assert call.error["code"] == "rate_limit_exceeded"
    assert chat_requests(upstream) == []


def test_tokens_per_minute_estimate_then_real_usage(same_minute, http, upstream, api_key, backend):
    key = key_of(api_key)
    openai_django.set_rate_limit(key, tokens_per_minute=1000)
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 200
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    estimate = int(response.headers["x-ratelimit-limit-tokens"]) - int(
        response.headers["x-ratelimit-remaining-tokens"])
    assert estimate >= CHAT["max_tokens"] and estimate > call.total_tokens
    # After the call the count holds its real usage: the next answer's remaining says so.
    nxt = http.post(f"{http.base}/chat/completions", json=CHAT)
    used_before_next = 1000 - int(nxt.headers["x-ratelimit-remaining-tokens"]) - estimate
    if used_before_next != call.total_tokens:  # only when a new minute began in between
        assert used_before_next == 0, used_before_next
    # A request estimated above the limit is refused as too large, nothing sent.
    upstream.clear_requests()
    big = dict(CHAT, max_tokens=5000)
    refused = http.post(f"{http.base}/chat/completions", json=big)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "Request too large" in refused.json()["error"]["message"]
    assert chat_requests(upstream) == []


def test_group_limit_is_shared_by_members(same_minute, http, upstream, api_key, user, other_api_key,
                                          other_user, gateway, backend):
    import requests

    team = Group.objects.create(name="team")
    team.user_set.add(user, other_user)
    openai_django.set_rate_limit(team, requests_per_minute=3)
    statuses = []
    for raw in (api_key, other_api_key, api_key, other_api_key):
        r = requests.post(f"{gateway}/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {raw}"})
        statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 429]


def test_budget_refused_when_spent_charged_from_real_usage(http, upstream, api_key, user):
    # A token budget: the first call reserves its estimate and is charged its real usage.
    openai_django.set_budget(user, daily_tokens=200)
    first = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert first.status_code == 200
    call = Call.objects.get(pk=first.headers["X-Call-Id"])
    [state] = openai_django.spend(user)
    assert state["period"] == "daily" and state["spent_tokens"] == call.total_tokens
    assert state["reserved_tokens"] == 0 and state["calls"] == 1
    assert not BudgetReservation.objects.exists()
    # Spend the rest, then a call that cannot fit is refused: 429 insufficient_quota.
    window = BudgetWindow.objects.get()
    BudgetWindow.objects.filter(pk=window.pk).update(spent_tokens=190)
    upstream.clear_requests()
    refused = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error == {"message": error["message"], "type": "insufficient_quota", "param": None,
                     "code": "insufficient_quota"}
    assert "daily budget of user alice is 200 tokens, 10 are left" in error["message"]
    rejected = Call.objects.get(pk=refused.headers["X-Call-Id"])
    assert rejected.outcome == Call.Outcome.REJECTED
    assert rejected.error["code"] == "insufficient_quota"
    assert chat_requests(upstream) == []
    assert BudgetWindow.objects.get().reserved_tokens == 0
    # Listing models costs nothing: a spent budget does not refuse it.
    assert http.get(f"{http.base}/models").status_code == 200


def test_dollar_budget_and_stream_charged_from_usage(http, upstream, api_key):
    key = key_of(api_key)
    openai_django.set_budget(key, monthly_usd="0.50", total_tokens=100_000)
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    with http.post(f"{http.base}/chat/completions", json=body, stream=True) as response:
        assert response.status_code == 200
        b"".join(response.iter_content(None))
        call_id = response.headers["X-Call-Id"]
    call = Call.objects.get(pk=call_id)
    assert call.stream and call.total_tokens and call.cost_usd
    by_period = {row["period"]: row for row in openai_django.spend(key)}
    assert by_period["monthly"]["spent_usd"] == call.cost_usd
    assert by_period["total"]["spent_tokens"] == call.total_tokens
    assert by_period["monthly"]["reserved_usd"] == 0
    assert by_period["monthly"]["start"] == datetime.date.today().replace(day=1) or True


def test_failed_call_releases_its_reservation(http, upstream, api_key, user):
    openai_django.set_budget(user, daily_tokens=10_000)
    upstream.fault(path="/v1/chat/completions", kind="status", status=500)
    response = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert response.status_code == 500
    window = BudgetWindow.objects.get()
    assert window.reserved_tokens == 0 and window.spent_tokens == 0
    assert not BudgetReservation.objects.exists()


def test_swept_call_releases_its_reservation(upstream, user):
    """A call whose process died (left running) is released when the sweep finishes it."""
    from openai_django import tasks

    openai_django.set_budget(user, daily_tokens=10_000)
    call = Call.objects.create(operation="createChatCompletion", method="POST",
                               path="/chat/completions", model="gpt-4o-mini", user=user,
                               status=Call.Status.RUNNING, holder="otherhost:1:1",
                               started_at=datetime.datetime(2020, 1, 1,
                                                            tzinfo=datetime.timezone.utc))
    allowance = Allowance.objects.get(user=user)
    from openai_django import budgets

    held = budgets.reserve([budgets.Budget(allowance.pk, "daily", None, 10_000, "user")],
                           call.pk, 0, 300)
    assert BudgetWindow.objects.get().reserved_tokens == 300 and held
    tasks.sweep()
    call.refresh_from_db()
    assert call.outcome == Call.Outcome.LOST
    assert BudgetWindow.objects.get().reserved_tokens == 0
    assert not BudgetReservation.objects.exists()


def test_orphan_reservation_swept(user):
    from openai_django import budgets

    allowance = openai_django.set_budget(user, daily_tokens=1000)
    budgets.reserve([budgets.Budget(allowance.pk, "daily", None, 1000, "user")], uuid.uuid4(),
                    0, 400)
    BudgetReservation.objects.update(created=datetime.datetime(2020, 1, 1,
                                                               tzinfo=datetime.timezone.utc))
    assert controls.sweep()["reservations"] == 1
    assert BudgetWindow.objects.get().reserved_tokens == 0


def test_background_call_checked_at_submit_and_charged_by_worker(user, upstream, settings):
    """A background call reserves at submit; the worker (eager here, a real one in
    test_async_worker) charges it when it finishes."""
    openai_django.set_budget(user, daily_tokens=60)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    from celery import current_app

    current_app.conf.task_always_eager = True
    try:
        call = openai_django.submit("createChatCompletion", user=user, **CHAT)
        call.refresh_from_db()
        assert call.status == Call.Status.SUCCEEDED
        window = BudgetWindow.objects.get()
        assert window.spent_tokens == call.total_tokens and window.reserved_tokens == 0
        BudgetWindow.objects.update(spent_tokens=60)
        with pytest.raises(controls.InsufficientQuota):
            openai_django.submit("createChatCompletion", user=user, **CHAT)
    finally:
        current_app.conf.task_always_eager = False


def test_python_api_refusal_raises(same_minute, user, upstream):
    openai_django.set_rate_limit(user, requests_per_minute=1)
    openai_django.create("createChatCompletion", user=user, **CHAT)
    with pytest.raises(controls.RateLimited) as info:
        openai_django.create("createChatCompletion", user=user, **CHAT)
    assert info.value.status_code == 429 and info.value.call.outcome == "rejected"


def test_python_api_set_and_clear(user):
    allowance = openai_django.set_budget(user, daily_usd=5, monthly_tokens=1000)
    assert allowance.daily_usd == Decimal("5") and allowance.monthly_tokens == 1000
    openai_django.set_rate_limit(user, requests_per_minute=10)
    allowance = openai_django.set_budget(user, daily_usd=None)
    assert allowance.daily_usd is None and allowance.monthly_tokens == 1000
    assert allowance.requests_per_minute == 10
    assert [row["period"] for row in openai_django.spend(user)] == ["monthly"]
    with pytest.raises(ValueError):
        openai_django.set_budget(user, daily_usd=-1)
    with pytest.raises(TypeError):
        openai_django.set_budget("alice", daily_usd=1)
    assert openai_django.clear_allowance(user)
    assert openai_django.get_allowance(user) is None


def test_management_command(user, api_key):
    key = key_of(api_key)
    team = Group.objects.create(name="team")
    out = io.StringIO()
    call_command("openai_limits", "set", "--user", "alice", "--daily-usd", "2.5", "--rpm",
                 "30", stdout=out)
    call_command("openai_limits", "set", "--key", key.prefix, "--monthly-tokens", "5000",
                 stdout=out)
    call_command("openai_limits", "set", "--group", "team", "--tpm", "9000", stdout=out)
    assert Allowance.objects.get(user=user).daily_usd == Decimal("2.5")
    assert Allowance.objects.get(user=user).requests_per_minute == 30
    assert Allowance.objects.get(api_key=key).monthly_tokens == 5000
    assert Allowance.objects.get(group=team).tokens_per_minute == 9000
    out = io.StringIO()
    call_command("openai_limits", "show", stdout=out)
    text = out.getvalue()
    assert "user alice" in text and "group team" in text and key.masked in text
    assert "2.500000" in text or "2.5" in text
    call_command("openai_limits", "set", "--user", "alice", "--daily-usd", "none", stdout=out)
    assert Allowance.objects.get(user=user).daily_usd is None
    call_command("openai_limits", "clear", "--group", "team", stdout=out)
    assert not Allowance.objects.filter(group=team).exists()
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        call_command("openai_limits", "set", "--user", "nobody", "--rpm", "1")


def test_rate_window_rows_purged(settings):
    RateWindow.objects.create(key="k:1", window=1, requests=3)
    assert limits.purge_old_windows() == 1


def test_a_call_refused_by_its_budget_is_not_counted_by_the_rate_limit(same_minute, http,
                                                                       upstream, api_key,
                                                                       user, backend):
    openai_django.set_rate_limit(user, requests_per_minute=10)
    openai_django.set_budget(user, daily_tokens=10_000)
    first = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    BudgetWindow.objects.update(spent_tokens=10_000)
    refused = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    BudgetWindow.objects.update(spent_tokens=0)
    again = http.post(f"{http.base}/chat/completions", json=CHAT)
    remaining = int(again.headers["x-ratelimit-remaining-requests"])
    assert remaining in (8, 9)  # 9: a new minute began in between
    assert remaining == 8 or again.headers["x-ratelimit-reset-requests"] != \
        first.headers["x-ratelimit-reset-requests"]


def test_system_check_of_the_backend(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RATE_LIMIT_BACKEND": "redis"}
    assert [e.id for e in controls.check_settings()] == ["openai_django.E010"]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RATE_LIMIT_BACKEND": "memcached"}
    assert [e.id for e in controls.check_settings()] == ["openai_django.E010"]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RATE_LIMIT_BACKEND": None}
    assert controls.check_settings() == []


def test_refusals_are_counted_by_the_prometheus_metrics(same_minute, http, upstream, api_key, user,
                                                         live_server, settings):
    """Real refusals (not simulated): one over a rate limit, one over a budget."""
    from collections import Counter

    from tests.test_metrics import delta, enable, scrape

    enable(settings)
    url = live_server.url + "/metrics"
    before = scrape(url)
    openai_django.set_rate_limit(key_of(api_key), requests_per_minute=1)
    openai_django.set_budget(user, daily_tokens=10_000)
    assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 200
    assert http.post(f"{http.base}/chat/completions", json=CHAT).json()["error"]["code"] == \
        "rate_limit_exceeded"
    openai_django.set_rate_limit(key_of(api_key), requests_per_minute=None)
    BudgetWindow.objects.update(spent_tokens=10_000)
    assert http.post(f"{http.base}/chat/completions", json=CHAT).json()["error"]["code"] == \
        "insufficient_quota"
    refusals = Counter()
    for (name, labels), value in delta(scrape(url), before).items():
        if name == "openai_django_refusals_total":
            refusals[dict(labels)["reason"]] += value
    assert refusals == {"budget": 1, "rate_limit": 1}


def test_a_first_allowance_from_another_process_applies_within_the_cache_delay(
        http, upstream, user, settings):
    import time

    from django.db import connection

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "LIMITS_CACHE_SECONDS": 0.5}
    assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 200
    # Written behind this process's back (no signal), as another process would.
    table = connection.ops.quote_name(Allowance._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (user_id, requests_per_minute, updated) "
                       f"VALUES (%s, 0, %s)", [user.pk, connection.ops.adapt_datetimefield_value(
                           datetime.datetime.now(datetime.timezone.utc))])
    time.sleep(0.6)
    refused = http.post(f"{http.base}/chat/completions", json=CHAT)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == \
        "rate_limit_exceeded"
    # A save in this process applies at once (the list is forgotten on save).
    Allowance.objects.filter(user=user).delete()
    assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 200
    openai_django.set_rate_limit(user, requests_per_minute=0)
    assert http.post(f"{http.base}/chat/completions", json=CHAT).status_code == 429
