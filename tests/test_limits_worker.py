"""Budgets of background calls with a real Celery worker (Redis broker): reserved when the
call is submitted, charged by the worker from the call's real usage when it finishes;
a submit past the budget is refused at once and nothing is queued or sent."""

import pytest

import openai_django
from openai_django import controls
from openai_django.models import BudgetReservation, BudgetWindow, Call
from tests.fixtures.celery_worker import wait_for

pytestmark = pytest.mark.slow


def chat(text):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            "max_tokens": 10}


def test_background_calls_reserve_at_submit_and_the_worker_charges(
        celery_broker, upstream, user, settings, celery_worker_factory):
    upstream.fault(path="/v1/chat/completions", kind="delay", seconds=0.3, times=-1)
    allowance = openai_django.set_budget(user, daily_tokens=10_000)
    celery_worker_factory(concurrency=2)
    ids = [openai_django.submit("createChatCompletion", user=user, **chat(f"job {n}")).pk
           for n in range(6)]
    # Reserved at submit, before any worker answered.
    assert BudgetWindow.objects.get(allowance=allowance).reserved_tokens > 0
    wait_for(lambda: Call.objects.filter(pk__in=ids, status=Call.Status.SUCCEEDED).count()
             == 6, 60, interval=0.2, message="6 background calls")
    calls = list(Call.objects.filter(pk__in=ids))
    window = BudgetWindow.objects.get(allowance=allowance)
    assert window.spent_tokens == sum(c.total_tokens for c in calls)
    assert window.reserved_tokens == 0 and window.calls == 6
    assert not BudgetReservation.objects.exists()
    # Spent: the next submit is refused at once, recorded as rejected, nothing queued.
    BudgetWindow.objects.filter(pk=window.pk).update(spent_tokens=10_000)
    upstream.clear_requests()
    with pytest.raises(controls.InsufficientQuota) as info:
        openai_django.submit("createChatCompletion", user=user, **chat("one more"))
    assert info.value.call.outcome == Call.Outcome.REJECTED
    assert not Call.objects.filter(status=Call.Status.QUEUED).exists()
    assert [r for r in upstream.requests() if r["path"] == "/v1/chat/completions"] == []
