"""``GC_FREEZE``: what a web process holds after its first requests is moved out of the
collector's reach (openai_django/gcfreeze.py), so that a full collection no longer walks it."""

import gc

import pytest
from django.core.signals import request_finished

from openai_django import gcfreeze


@pytest.fixture
def fresh():
    gc.unfreeze()
    gcfreeze._state.update(pid=None, requests=0)
    yield
    gc.unfreeze()
    gcfreeze._state.update(pid=None, requests=0)


def _collectable():
    """Ids of the objects the collector walks (its three generations; frozen ones are not)."""
    return {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation=generation)}


def _requests(n):
    for _ in range(n):
        request_finished.send(sender=None)


def test_first_requests_freeze_what_the_process_holds(fresh, client):
    assert gc.get_freeze_count() == 0
    client.get("/v1/openapi.yaml")  # a real request: Django sends request_finished
    after_first = gc.get_freeze_count()
    assert after_first > 1000
    loaded_later = [[] for _ in range(5000)]  # tracked objects made after the first freeze
    _requests(8)  # the 9th request: not yet (frozen objects may be freed meanwhile: <=)
    assert gc.get_freeze_count() <= after_first
    assert any(id(x) in _collectable() for x in loaded_later)
    _requests(1)  # the 10th
    assert not any(id(x) in _collectable() for x in loaded_later)  # frozen too
    # Frozen objects are still freed by reference counting.
    before = gc.get_freeze_count()
    del loaded_later
    assert gc.get_freeze_count() <= before - 5000


def test_a_full_collection_skips_the_frozen_objects(fresh):
    held = [[i] for i in range(100_000)]
    _requests(1)
    assert gc.get_freeze_count() >= len(held)
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert not any(id(x) in oldest for x in held)  # the oldest generation no longer has them
    gc.unfreeze()
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(x) in oldest for x in held)


def test_off_leaves_the_collector_alone(fresh, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "GC_FREEZE": None}
    _requests(10)
    assert gc.get_freeze_count() == 0


def test_every_period_one_full_collection_frees_what_was_frozen(fresh, settings):
    """A retired thread's database connection is a reference cycle: frozen, only the periodic
    full collection frees it."""
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "GC_FREEZE": 0.2}

    class Cycle:
        pass

    import weakref

    cycle = Cycle()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    _requests(1)  # frozen with it
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: a collection does not see it
    gcfreeze._state["requests"] = gcfreeze.FREEZE_AFTER[-1] + 1
    gcfreeze._state["refresh_at"] = 0.0  # the period is over
    _requests(1)
    assert alive() is None
    assert gc.get_freeze_count() > 1000  # frozen again
