"""The checkpointer's write budget (``STREAM_CHECKPOINT_BUDGET``): with more open streams than
the budget saves in one interval, each stream is saved less often, so a process's checkpoint
writes per second stay bounded; with few streams every one is saved each interval.

The relays here are stand-ins with a ``checkpoint()`` that counts its calls: what is measured
is the real :class:`openai_django.gateway.Checkpointer` (its own thread, its own clock).
"""

import threading
import time

import pytest

from openai_django.gateway import Checkpointer


class CountingRelay:
    def __init__(self):
        self.saves = 0
        self.lock = threading.Lock()

    def checkpoint(self):
        with self.lock:
            self.saves += 1


def _run(count, every, seconds):
    checkpointer = Checkpointer()
    relays = [CountingRelay() for _ in range(count)]
    for relay in relays:
        checkpointer.watch(relay, every)
    time.sleep(seconds)
    for relay in relays:
        checkpointer.forget(relay)
    return sum(r.saves for r in relays), relays


@pytest.mark.timeout(30)
def test_many_streams_are_saved_within_the_budget(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STREAM_CHECKPOINT_BUDGET": 200}
    # 1,000 streams every 0.2 s would be 5,000 saves a second; the budget allows 200.
    saves, relays = _run(1000, 0.2, 2.5)
    assert saves <= 200 * 2.5 * 1.1, saves
    # ...and they are still saved: every 1,000 / 200 = 5 s each, so within 2.5 s none twice.
    assert max(r.saves for r in relays) <= 1


@pytest.mark.timeout(30)
def test_few_streams_are_saved_every_interval(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STREAM_CHECKPOINT_BUDGET": 200}
    saves, relays = _run(10, 0.2, 1.5)
    # 10 streams at 0.2 s: 50 saves a second, under the budget: each one about 7 times.
    assert all(r.saves >= 4 for r in relays), [r.saves for r in relays]


@pytest.mark.timeout(30)
def test_no_budget_saves_every_stream_every_interval(settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STREAM_CHECKPOINT_BUDGET": None}
    saves, relays = _run(1000, 0.5, 1.8)
    assert min(r.saves for r in relays) >= 2, saves
