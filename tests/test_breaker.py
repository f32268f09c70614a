"""The circuit breaker's state is shared: two breakers (as two processes would have, each with
its own view) over one store, the database or a real Redis, count failures together, see each
other open and close a circuit, and let a call through again after the cool-down."""

import time
import uuid

import pytest

from openai_django.breaker import Breaker
from openai_django.models import UpstreamHealth

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["db", "redis"])
def store(request, settings):
    options = {"threshold": 3, "cooldown": 0.5, "backend": request.param, "refresh": 0}
    extra = {}
    if request.param == "redis":
        extra["CONCURRENCY_REDIS_URL"] = request.getfixturevalue("celery_redis_url")
    settings.OPENAI_DJANGO = {**(getattr(settings, "OPENAI_DJANGO", {}) or {}),
                              "CIRCUIT_BREAKER": options, **extra}
    return request.param


def failure(breaker, name, status=500):
    breaker.failure(name, {"status": status})
    breaker.flush()


def test_failures_of_two_processes_add_up_and_both_skip(store):
    name = f"u-{uuid.uuid4().hex[:8]}"
    one, two = Breaker(), Breaker()
    failure(one, name)
    failure(two, name, 429)
    assert one.allows(name) and two.allows(name)
    failure(one, name, 503)  # the third in a row, counted by both
    assert not two.allows(name) and not one.allows(name)
    state = two.state(name)
    assert state["state"] == "open" and state["failures"] == 3
    assert state["last_error"] == "HTTP 503" and state["times_opened"] == 1
    if store == "db":
        assert UpstreamHealth.objects.get(name=name).opened_until is not None
    time.sleep(0.6)  # the cool-down: half-open, a call may try it
    assert two.allows(name)
    assert two.state(name)["state"] == "half-open"
    failure(two, name)  # the probe failed: open again at once
    assert not one.allows(name)
    time.sleep(0.6)
    two.success(name)
    two.flush()
    assert one.allows(name) and one.state(name)["state"] == "closed"
    assert one.state(name)["failures"] == 0


def test_a_success_between_failures_starts_the_count_again(store):
    name = f"u-{uuid.uuid4().hex[:8]}"
    one, two = Breaker(), Breaker()
    failure(one, name)
    failure(one, name)
    two.refresh([name])
    assert two.failing(name)
    two.success(name)
    two.flush()
    failure(one, name)
    failure(one, name)
    assert one.allows(name) and two.allows(name)
    assert two.state(name)["failures"] == 2
