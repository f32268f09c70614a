"""The demo's filesystem broker: a consumer sees a message whole or not at all.

Real kombu channels on a real folder (tmp_path), one publisher and one consumer. The window
where kombu's own transport exposes a message before it is written (kombu #1551) is entered
deterministically: the payload is a dict whose ``items()`` (called by the JSON encoder while
the message is being serialized) polls the folder as a worker would.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

OURS = "openai_django.filesystem_broker:Transport"
ROOT = Path(__file__).resolve().parents[1]


def channel(transport, folder):
    return Connection("filesystem://", transport=transport, transport_options={
        "data_folder_in": str(folder), "data_folder_out": str(folder)}).channel()


def poll(consumer):
    """What a worker's poll of the folder takes right now: a payload, "empty", or an error."""
    try:
        return consumer._get("q")
    except Empty:
        return "empty"
    except Exception as exc:  # what an empty or half-written message raises
        return exc


class Polling(dict):
    """A payload that polls the folder while it is being serialized."""

    def __init__(self, consumer, seen, **fields):
        super().__init__(**fields)
        self.consumer = consumer
        self.seen = seen

    def items(self):
        self.seen.append(poll(self.consumer))
        return super().items()


def publish_while_polling(transport, folder):
    consumer = channel(transport, folder)
    seen = []
    channel(transport, folder)._put("q", Polling(consumer, seen, body="hello", n=1))
    return seen, poll(consumer)


def test_a_message_being_published_is_not_taken_half_written(tmp_path):
    seen, after = publish_while_polling(OURS, tmp_path)
    assert seen == ["empty"]
    assert after == {"body": "hello", "n": 1}
    assert os.listdir(tmp_path) == []


def test_kombus_own_transport_still_loses_it(tmp_path):
    """kombu's transport hands the poll an empty file, and the message is gone: the reason
    for :mod:`openai_django.filesystem_broker`. When kombu fixes #1551 this fails: then the
    demo can go back to kombu's transport."""
    seen, after = publish_while_polling("filesystem", tmp_path)
    assert isinstance(seen[0], ValueError), seen  # JSONDecodeError: "Expecting value"
    assert after == "empty"


def test_a_partial_file_is_neither_taken_counted_nor_purged(tmp_path):
    partial = tmp_path / ".0d5c9e5e-partial.partial"
    partial.write_bytes(b'{"body": "hal')
    ours = channel(OURS, tmp_path)
    ours._put("q", {"body": "whole"})
    assert ours._size("q") == 1
    assert poll(ours) == {"body": "whole"}
    assert poll(ours) == "empty"
    ours._put("q", {"body": "again"})
    assert ours._purge("q") == 1
    assert os.listdir(tmp_path) == [partial.name]


def test_each_queue_gets_its_own_messages(tmp_path):
    ours = channel(OURS, tmp_path)
    for n in range(5):
        ours._put("q", {"n": n})
        ours._put("other", {"n": -n})
    # kombu's names order messages by the millisecond only, as before: compared as sets.
    assert {poll(ours)["n"] for _ in range(5)} == {0, 1, 2, 3, 4}
    assert poll(ours) == "empty"
    assert ours._size("other") == 5


def test_a_message_that_cannot_be_written_leaves_no_file(tmp_path):
    ours = channel(OURS, tmp_path / "missing")
    with pytest.raises(Exception) as raised:
        ours._put("q", {"body": "x"})
    assert type(raised.value).__name__ == "ChannelError"
    assert not (tmp_path / "missing").exists()
    with pytest.raises(TypeError):
        channel(OURS, tmp_path)._put("q", {"body": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url, transport", [
    (None, "openai_django.filesystem_broker.Transport"),
    ("redis://127.0.0.1:9/0", "kombu.transport.redis.Transport"),
])
def test_the_demo_uses_it_for_its_folder_broker_only(url, transport):
    """The demo's Celery app (web process and worker alike), in a process of its own with the
    demo's settings: its folder broker goes through this transport; a broker URL of the
    site's own keeps that URL's transport."""
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    if url:
        env["CELERY_BROKER_URL"] = url
    code = ("import django; django.setup(); from project.celery import app; "
            "t = type(app.connection_for_write().transport); "
            "print(t.__module__ + '.' + t.__name__)")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == transport


def test_partial_files_of_dead_publishers_are_removed_by_the_next_channel(tmp_path):
    from openai_django.filesystem_broker import STALE_PARTIAL_SECONDS

    old, fresh = tmp_path / ".dead.partial", tmp_path / ".live.partial"
    old.write_bytes(b'{"body": "ha')
    fresh.write_bytes(b'{"body": "wri')
    past = time.time() - STALE_PARTIAL_SECONDS - 5
    os.utime(old, (past, past))
    channel(OURS, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [fresh.name]
