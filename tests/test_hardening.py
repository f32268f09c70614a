"""Hardening: duplicate JSON keys, chunked bodies, streams checkpointed while relayed, and
calls orphaned by a dead process finished without celery beat."""

import subprocess
import sys
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from openai_django import process, recovery
from openai_django.models import Call

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_key_given_twice_is_refused_naming_it(http, upstream):
    raw = (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
           b'"messages": 5}')
    response = http.post(f"{http.base}/chat/completions", data=raw,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and error["code"] == "duplicate_key"
    assert upstream.requests() == []
    assert Call.objects.get(pk=response.headers["X-Call-Id"]).outcome == "rejected"


def test_a_key_twice_in_a_nested_object_is_refused_too(http, upstream):
    raw = (b'{"model": "m", "messages": [{"role": "user", "role": "system", '
           b'"content": "hi"}]}')
    response = http.post(f"{http.base}/chat/completions", data=raw,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "role"


def test_the_same_key_in_two_objects_is_fine(http, upstream):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"},
                                                 {"role": "assistant", "content": "b"},
                                                 {"role": "user", "content": "c"}]}
    assert http.post(f"{http.base}/chat/completions", json=body).status_code == 200


def test_a_chunked_body_the_server_cannot_read_is_a_411_not_an_empty_body(http, upstream):
    # Django's development server (the live server here) does not terminate a chunked input;
    # servers that do (gunicorn, granian) hand the body over: see tests/test_crash.py.
    def chunks():
        yield b'{"model": "gpt-4o-mini", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    response = http.post(f"{http.base}/chat/completions", data=chunks(),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 411, response.text
    assert response.json()["error"]["code"] == "length_required"
    assert upstream.requests() == []


def test_a_stream_is_checkpointed_while_it_is_relayed(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STREAM_CHECKPOINT_SECONDS": 0.05}
    upstream.configure(events=12, gap_ms=100)
    response = http.post(f"{http.base}/chat/completions", json={**CHAT, "stream": True},
                         stream=True)
    call_id = response.headers["X-Call-Id"]
    lines = response.iter_lines()
    seen = 0
    for line in lines:
        if line.startswith(b"data: {"):
            seen += 1
            if seen == 6:
                break
    time.sleep(0.1)
    # Mid-stream, the record already holds what was relayed (minus at most one interval: the
    # relay runs ahead of this reader by what the socket buffers hold).
    call = Call.objects.get(pk=call_id)
    assert call.status == Call.Status.RUNNING
    assert call.stream_events and 4 <= len(call.stream_events) < 12
    assert call.output_text
    assert call.holder == process.identity()
    for _ in lines:
        pass
    response.close()
    call.refresh_from_db()
    assert call.status == Call.Status.SUCCEEDED and len(call.stream_events) >= 12


def _orphan(**fields):
    """A running sync call whose serving process has died (a real process, started and
    killed here), as a crash leaves it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = process._proc_start(child.pid)
    child.kill()
    child.wait()
    defaults = dict(operation="createChatCompletion", method="POST",
                    path="/chat/completions", status=Call.Status.RUNNING, mode="stream",
                    stream=True, started_at=timezone.now(),
                    holder=f"{process.HOST}:{child.pid}:{start}",
                    stream_events=['{"choices": [{"index": 0, "delta": {"content": "Hel"}}]}'],
                    output_text="Hel")
    defaults.update(fields)
    return Call.objects.create(**defaults)


def test_a_call_orphaned_by_a_dead_process_is_swept_by_the_next_request(http, upstream):
    orphan = _orphan()
    alive = _orphan(holder=process.identity())  # this process: alive, not touched
    recovery._last[0] = 0.0  # as in a process that has served nothing yet
    try:
        assert http.get(f"{http.base}/models").status_code == 200
        deadline = time.monotonic() + 5
        while Call.objects.get(pk=orphan.pk).status == Call.Status.RUNNING:
            assert time.monotonic() < deadline, "the orphan was not swept"
            time.sleep(0.05)
    finally:
        recovery._last[0] = float("inf")
    orphan.refresh_from_db()
    assert orphan.status == Call.Status.FAILED and orphan.outcome == Call.Outcome.LOST
    assert orphan.error["code"] == "call_lost" and orphan.finished_at is not None
    # What was relayed before the crash stays in the record.
    assert orphan.stream_events and orphan.output_text == "Hel"
    assert Call.objects.get(pk=alive.pk).status == Call.Status.RUNNING


def test_a_sweep_due_on_an_event_loop_runs_in_the_database_pool(monkeypatch):
    """The lean ASGI entry closes a response on the event loop: a sweep that falls due there
    goes to the database pool (the ORM may not run on the loop) and the loop goes on."""
    import asyncio
    import threading

    import openai_django.tasks as tasks

    orphan = _orphan()
    ran_in = []
    real_sweep = tasks.sweep

    def noting(*args, **kwargs):  # the real sweep, and the thread it ran in
        ran_in.append(threading.current_thread().name)
        return real_sweep(*args, **kwargs)

    async def on_the_loop():
        recovery.maybe_sweep()  # returns at once: the sweep was handed to the pool

    monkeypatch.setattr(tasks, "sweep", noting)
    recovery._last[0] = 0.0
    try:
        asyncio.run(on_the_loop())
        deadline = time.monotonic() + 10
        while Call.objects.get(pk=orphan.pk).status == Call.Status.RUNNING:
            assert time.monotonic() < deadline, "the orphan was not swept"
            time.sleep(0.05)
        while recovery._lock.locked():  # released by the pool's thread once done
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        recovery._last[0] = float("inf")
    assert len(ran_in) == 1 and ran_in[0].startswith("openai-django-db"), ran_in
    assert Call.objects.get(pk=orphan.pk).outcome == Call.Outcome.LOST


def test_openai_sweep_finishes_orphans_from_cron(capsys):
    orphan = _orphan(mode="sync", stream=False, stream_events=None, output_text="")
    call_command("openai_sweep", "--json")
    assert '"lost": 1' in capsys.readouterr().out
    orphan.refresh_from_db()
    assert orphan.outcome == Call.Outcome.LOST


def test_a_check_warns_when_nothing_sweeps(settings):
    from openai_django.checks import _check_sweep

    settings.OPENAI_DJANGO = {"SWEEP_INTERVAL": None}
    settings.CELERY_BEAT_SCHEDULE = {}
    assert [w.id for w in _check_sweep()] == ["openai_django.W008"]
    settings.CELERY_BEAT_SCHEDULE = {"sweep": {"task": "openai_django.sweep_stale_calls",
                                               "schedule": 300}}
    assert _check_sweep() == []
    settings.OPENAI_DJANGO = {}
    settings.CELERY_BEAT_SCHEDULE = {}
    assert _check_sweep() == []

