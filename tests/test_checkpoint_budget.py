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


def _chunk(text):
    import json

    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": None}]}, ensure_ascii=False)


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_saves_a_running_call_only_and_reads_back_as_saved():
    """A checkpoint (one prepared UPDATE, ``CallManager.update_running``) stores the events
    and the text they make exactly as the ORM would (JSON, non-ASCII; the text's NUL, which
    PostgreSQL cannot hold, as U+FFFD there); once the call is finished, a late checkpoint
    changes nothing."""
    from django.db import connection

    from openai_django import recorder
    from openai_django.models import Call

    call = Call.objects.create(operation="createChatCompletion", method="POST",
                               path="/chat/completions", status=Call.Status.RUNNING,
                               mode="stream", stream=True,
                               request_body={"model": "gpt-4o-mini", "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]})
    events = [_chunk("Grüße, "), _chunk("wörld \x00"), _chunk("✓")]
    recorder.checkpoint(call, events)
    row = Call.objects.get(pk=call.pk)
    nul = "\ufffd" if connection.vendor == "postgresql" else "\x00"
    assert row.stream_events == events  # (the event's NUL is JSON's escape, 6 characters)
    assert row.output_text == f"Grüße, wörld {nul}✓"
    assert row.status == Call.Status.RUNNING

    Call.objects.filter(pk=call.pk).update(status=Call.Status.SUCCEEDED)
    recorder.checkpoint(call, events + [_chunk(" more")])  # late: after the finish
    again = Call.objects.get(pk=call.pk)
    assert again.stream_events == row.stream_events and again.output_text == row.output_text
    assert Call.objects.update_running(call.pk, "default", output_text="x") == 0
