"""Request threads take turns at the gateway's Python in arrival order (openai_django/fairness.py),
and give their turn back while they wait on the upstream or on the writer."""

import threading
import time

import pytest
import requests

from openai_django import fairness
from openai_django.fairness import FifoGate
from openai_django.models import Call

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _queue_up(gate, count):
    """``count`` threads waiting on a full ``gate``, queued one after the other; returns the
    threads and the list they append their index to once they have a permit."""
    order, threads = [], []
    for index in range(count):
        def take(index=index):
            gate.acquire()
            order.append(index)
        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while len(gate._waiters) < index + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(gate._waiters) == index + 1
        threads.append(thread)
    return threads, order


def test_waiters_are_served_in_arrival_order():
    gate = FifoGate(1)
    assert gate.acquire()
    threads, order = _queue_up(gate, 8)
    for expected in range(8):
        gate.release()  # handed to the oldest waiter, never taken back by a newcomer
        deadline = time.monotonic() + 5
        while len(order) < expected + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert order == list(range(expected + 1))
        assert gate.acquire(timeout=0) is False  # the permit went to the waiter, not to us
    gate.release()
    assert gate._free == 1 and not gate._waiters
    for thread in threads:
        thread.join(5)


def test_a_waiter_that_times_out_leaves_the_queue():
    gate = FifoGate(1)
    assert gate.acquire()
    started = time.monotonic()
    assert gate.acquire(timeout=0.05) is False
    assert time.monotonic() - started >= 0.05
    assert not gate._waiters
    gate.release()  # nobody waits: the permit is free again, not handed to the one that left
    assert gate._free == 1
    assert gate.acquire(timeout=0) is True


def test_entered_and_outside(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "FAIR_CONCURRENCY": 1}
    gate = fairness.gate()
    assert gate is not None and gate.permits == 1
    with fairness.outside():  # holding none: nothing to give back
        assert gate._free == 1
    with fairness.entered():
        assert gate._free == 0
        with fairness.entered():  # nested: the outer permit counts
            assert gate._free == 0
        assert gate._free == 0
        with fairness.outside():
            assert gate._free == 1  # another thread may run meanwhile
            other = threading.Thread(target=lambda: fairness.gate().acquire() and
                                     fairness.gate().release())
            other.start()
            other.join(5)
            assert not other.is_alive()
        assert gate._free == 0
    assert gate._free == 1


def test_off(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "FAIR_CONCURRENCY": 0}
    assert fairness.gate() is None
    with fairness.entered(), fairness.outside():
        pass


@pytest.mark.django_db(transaction=True)
def test_the_upstream_wait_is_outside_the_turn(settings, http, upstream):
    """One permit, four calls whose upstream answers after a second each: the upstream is
    asked for all four at once (each call gives its turn back while it waits), and every call
    is answered and recorded."""
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "FAIR_CONCURRENCY": 1}
    upstream.clear_requests()
    upstream.fault(path="/v1/chat/completions", kind="delay", seconds=1.0, times=4)
    answers = []

    def call():
        answers.append(requests.post(f"{http.base}/chat/completions", json=CHAT,
                                     headers=dict(http.headers), timeout=30))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200] * 4
    arrivals = sorted(entry["time"] for entry in upstream.requests()
                      if entry["path"] == "/v1/chat/completions")
    assert len(arrivals) == 4
    # Serialised by the gate they would arrive a second apart; they all came during the first.
    assert arrivals[-1] - arrivals[0] < 1.0, arrivals
    ids = [a.headers["X-Call-Id"] for a in answers]
    assert Call.objects.filter(pk__in=ids, status=Call.Status.SUCCEEDED).count() == 4
    assert fairness.gate()._free == 1


def test_an_overdue_turn_goes_on_and_never_gives_back_what_it_has_not(settings, monkeypatch):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "FAIR_CONCURRENCY": 1}
    monkeypatch.setattr(fairness, "WAIT_SECONDS", 0.05)
    gate = fairness.gate()
    held = threading.Event()
    done = threading.Event()

    def hold():  # another thread keeps the only permit meanwhile
        gate.acquire()
        held.set()
        done.wait(5)
        gate.release()

    with fairness.entered():
        with fairness.outside():
            holder = threading.Thread(target=hold)
            holder.start()
            held.wait(5)
        # Back from the wait, the permit is taken: this thread goes on without one.
        assert gate._free == 0
    assert gate._free == 0  # and did not give back the holder's permit
    done.set()
    holder.join(5)
    assert gate._free == 1
    with fairness.entered():  # an overdue start goes on too
        assert gate._free == 0
