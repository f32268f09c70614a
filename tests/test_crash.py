"""No crash leaves a call running: the gateway in a real server process, killed with SIGKILL.

Each test runs the demo project under granian (WSGI) or gunicorn (gthread) on a SQLite file of
its own (``tests/fixtures/server.py``), with the stand-in as upstream pacing its streams, kills
the server (or one worker) with ``kill -9`` in the middle of a call, and checks the record:
``running`` with what was checkpointed until somebody sweeps, then ``failed``/``lost`` with the
events kept, whether the sweep is a restarted server's first request, ``manage.py
openai_sweep`` from cron, or a surviving worker of the same server. Plus chunked request bodies
through real servers (both terminate ``wsgi.input``: ``wsgi.input_terminated`` is set).

Every process is started in a process group of its own and stopped by it, even on failure.
Run: ``.venv/bin/python -m pytest tests/test_crash.py -v -s`` (``-s`` shows the figures).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import sqlite3
import threading
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHECKPOINT = 0.2  # STREAM_CHECKPOINT_SECONDS of the servers under test
EVENTS, GAP = 40, 0.1  # the slow stream: 40 events 100 ms apart
# Checkpoints are taken as events are relayed, so the last one before a kill is at most one
# interval plus one event gap old; the rest is scheduling (2 cores, 3 processes busy).
SLACK = 0.25
SERVERS = ["granian", "gunicorn"]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a story"}]}


def _pid(holder):
    return int(holder.split(":")[1])


class EventStream:
    """A streaming chat completion read event by event, each stamped on arrival."""

    def __init__(self, server, headers, body=None, timeout=10.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        payload = json.dumps(body or {**CHAT, "stream": True})
        self.conn.request("POST", "/v1/chat/completions", payload,
                          {**headers, "Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.call_id = self.response.getheader("X-Call-Id")
        self.events, self.times = [], []
        self.pending = b""
        self.ended = None  # why reading stopped: "eof", "done" or an exception name

    def _read(self):
        try:
            data = self.response.read1(65536)
        except (http.client.HTTPException, OSError) as exc:
            self.ended = type(exc).__name__
            return False
        if not data:
            self.ended = "eof"
            return False
        now = time.monotonic()
        self.pending += data
        while b"\n\n" in self.pending:
            block, self.pending = self.pending.split(b"\n\n", 1)
            if block.startswith(b"data: "):
                payload = block[6:].decode()
                if payload == "[DONE]":
                    self.ended = "done"
                else:
                    self.events.append(payload)
                    self.times.append(now)
        return True

    def read_until(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"only {len(self.events)} events"
            assert self._read(), f"stream ended ({self.ended}) after {len(self.events)}"

    def drain(self, timeout=10.0):
        """Read whatever the server had sent until the connection ends (it is dead)."""
        deadline = time.monotonic() + timeout
        while self._read() and self.ended != "done":
            assert time.monotonic() < deadline, "the stream did not end"
        self.conn.close()


def _assert_lost(row, saved):
    assert row["status"] == "failed" and row["outcome"] == "lost", row
    assert row["finished_at"] is not None
    assert row["error"]["code"] == "call_lost", row["error"]
    if saved is not None:
        assert row["stream_events"] == saved  # what was checkpointed is all still there


def _kill_mid_stream(site, server, upstream, after=15):
    """Start a slow stream, read ``after`` events, kill -9 the server's group. Returns the
    stream, the row right after the kill and the kill's time."""
    upstream.configure(events=EVENTS, gap_ms=int(GAP * 1000), ttft_ms=0)
    pids = server.pids()
    stream = EventStream(server, site.headers)
    stream.read_until(after)
    killed_at = server.kill(signal.SIGKILL)
    stream.drain()
    row = site.call(stream.call_id)
    assert row["status"] == "running" and row["finished_at"] is None, row
    assert _pid(row["holder"]) in pids and not server.pids()
    saved = row["stream_events"] or []
    # What the record holds is exactly the first events the client got, in order.
    assert saved == stream.events[:len(saved)]
    relayed = len(stream.events)
    assert len(saved) <= relayed < EVENTS
    # Everything relayed more than one checkpoint interval (+ one event gap) before the kill
    # was saved: the first unsaved event arrived at most that long before the kill.
    window = killed_at - stream.times[len(saved)] if len(saved) < relayed else 0.0
    print(f"\n[{server.kind}] relayed {relayed} events, {len(saved)} checkpointed; lost "
          f"{relayed - len(saved)} events = the last {window * 1000:.0f} ms before the kill "
          f"(bound {(CHECKPOINT + GAP) * 1000:.0f} ms + {SLACK * 1000:.0f} ms slack)")
    assert window <= CHECKPOINT + GAP + SLACK
    assert row["output_text"] and row["output_text"] in "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "") for e in stream.events)
    return stream, row


@pytest.mark.parametrize("kind", [*SERVERS, "uvicorn"])
def test_kill_9_mid_stream_then_restart_finishes_it_as_lost(kind, gateway_site, crash_upstream):
    site = gateway_site(STREAM_CHECKPOINT_SECONDS=CHECKPOINT)
    stream, row = _kill_mid_stream(site, site.start_server(kind), crash_upstream)
    restarted = time.monotonic()
    server = site.start_server(kind)
    started = time.monotonic()
    assert site.get(server, "/v1/models")[0] == 200
    swept = site.wait_call(stream.call_id, lambda r: r["status"] != "running", timeout=10)
    print(f"[{kind}] restart {started - restarted:.2f} s, swept "
          f"{(time.monotonic() - started) * 1000:.0f} ms after the first request was sent")
    _assert_lost(swept, row["stream_events"])
    assert swept["output_text"] == row["output_text"]


def _start_delayed_call(site, server, upstream):
    """A non-stream call the stand-in holds for 30 s; returns the thread making it and the
    id of its row once the stand-in has the request."""
    upstream.fault(path="/v1/chat/completions", kind="delay", seconds=30, times=1)
    outcome = {}

    def call():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=40)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(CHAT),
                         {**site.headers, "Content-Type": "application/json"})
            outcome["status"] = conn.getresponse().status
        except (http.client.HTTPException, OSError) as exc:
            outcome["error"] = type(exc).__name__
        finally:
            conn.close()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not [r for r in upstream.requests() if r["path"] == "/v1/chat/completions"]:
        assert time.monotonic() < deadline, "the stand-in never got the call"
        time.sleep(0.05)
    with sqlite3.connect(site.db_path) as conn:
        (call_id,) = conn.execute("SELECT id FROM openai_django_call").fetchone()
    return thread, outcome, call_id


def test_kill_9_mid_call_then_restart_finishes_it_as_lost(gateway_site, crash_upstream):
    site = gateway_site(STREAM_CHECKPOINT_SECONDS=CHECKPOINT)
    server = site.start_server("granian")
    pids = server.pids()
    thread, outcome, call_id = _start_delayed_call(site, server, crash_upstream)
    server.kill(signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive() and "status" not in outcome, outcome  # the client got no answer
    row = site.call(call_id)
    assert row["status"] == "running" and row["response_status"] is None, row
    assert _pid(row["holder"]) in pids and row["request_body"] == CHAT
    server = site.start_server("granian")
    started = time.monotonic()
    assert site.get(server, "/v1/models")[0] == 200
    swept = site.wait_call(call_id, lambda r: r["status"] != "running", timeout=10)
    print(f"\n[granian] non-stream call swept {(time.monotonic() - started) * 1000:.0f} ms "
          f"after the restarted server's first request; client saw {outcome}")
    _assert_lost(swept, None)
    assert swept["request_body"] == CHAT


def test_kill_9_without_restart_cron_sweep_finishes_it(gateway_site, crash_upstream):
    site = gateway_site(STREAM_CHECKPOINT_SECONDS=CHECKPOINT)
    stream, row = _kill_mid_stream(site, site.start_server("granian"), crash_upstream)
    time.sleep(0.5)
    assert site.call(stream.call_id)["status"] == "running"  # nobody sweeps by itself
    started = time.monotonic()
    out = site.manage("openai_sweep", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["lost"] == 1
    print(f"[cron] manage.py openai_sweep took {time.monotonic() - started:.2f} s: "
          f"{out.stdout.strip()}")
    _assert_lost(site.call(stream.call_id), row["stream_events"])
    # A second sweep has nothing left to do.
    assert json.loads(site.manage("openai_sweep", "--json").stdout)["lost"] == 0


@pytest.mark.parametrize("kind", SERVERS)
def test_a_surviving_worker_sweeps_the_call_of_a_killed_one(kind, gateway_site,
                                                            crash_upstream):
    # Both servers respawn a dead worker at once, and the new worker's first request would
    # sweep; to see the survivor do it, the master is stopped (SIGSTOP) while the worker dies,
    # as a master too busy to respawn would be. The workers accept connections themselves.
    interval = 1
    site = gateway_site(STREAM_CHECKPOINT_SECONDS=CHECKPOINT, SWEEP_INTERVAL=interval)
    server = site.start_server(kind, workers=2)
    workers = server.worker_pids()
    assert len(workers) == 2, server.pids()
    for _ in range(6):  # both workers serve (and make their first sweep) before the call
        assert site.get(server, "/v1/models")[0] == 200
    crash_upstream.configure(events=EVENTS, gap_ms=int(GAP * 1000), ttft_ms=0)
    stream = EventStream(server, site.headers)
    stream.read_until(5)
    holder = _pid(site.call(stream.call_id)["holder"])
    (survivor,) = [pid for pid in workers if pid != holder]
    os.kill(server.proc.pid, signal.SIGSTOP)  # the master of the group this test started
    try:
        killed_at = time.monotonic()
        os.kill(holder, signal.SIGKILL)  # one worker of that group
        stream.drain()
        statuses = []

        def one_request():
            try:
                statuses.append(site.get(server, "/v1/models")[0])
            except ConnectionResetError:
                # A connection the kernel had queued for the killed worker is reset with
                # it (seen under load): the client retries, as a real one would.
                statuses.append("reset")
            time.sleep(0.1)

        swept = site.wait_call(stream.call_id, lambda r: r["status"] != "running",
                               timeout=interval + 10, poll=0.0, between=one_request)
        took = time.monotonic() - killed_at
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    sweepers = [line for line in server.log_lines("Orphaned calls swept by web process")]
    print(f"\n[{kind}] worker {holder} of 2 killed (master stopped): swept {took:.2f} s after "
          f"the kill (SWEEP_INTERVAL {interval} s) by {sweepers}; {len(statuses)} requests "
          f"meanwhile, statuses {sorted(set(map(str, statuses)))}")
    assert set(statuses) <= {200, "reset"} and statuses.count(200) >= len(statuses) - 2
    assert len(sweepers) == 1 and f"pid={survivor} " in sweepers[0]
    _assert_lost(swept, site.call(stream.call_id)["stream_events"])
    assert took <= interval + 3
    # Once the master runs again it replaces the dead worker and the server goes on serving.
    deadline = time.monotonic() + 15
    while len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    assert site.get(server, "/v1/models")[0] == 200 and survivor in server.worker_pids()


def _chunked(data, size):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def _post_chunked(server, headers, path, body, content_type, size):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, _chunked(body, size),
                     {**headers, "Content-Type": content_type}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.getheader("X-Call-Id"), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("kind", SERVERS)
def test_chunked_bodies_are_read_and_forwarded_by_real_servers(kind, gateway_site,
                                                               crash_upstream):
    site = gateway_site()
    server = site.start_server(kind)
    raw = json.dumps(CHAT).encode()
    status, call_id, body = _post_chunked(server, site.headers, "/v1/chat/completions", raw,
                                          "application/json", 7)
    assert status == 200, body
    sent = crash_upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"] == CHAT
    row = site.call(call_id)
    assert row["status"] == "succeeded" and row["request_body"] == CHAT

    content = os.urandom(300_000)
    boundary = "crashtestboundary7d1f"
    multipart = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
        f"assistants\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"data.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    status, call_id, body = _post_chunked(server, site.headers, "/v1/files", multipart,
                                          f"multipart/form-data; boundary={boundary}", 65536)
    assert status == 200, body
    sent = crash_upstream.requests()[-1]
    assert sent["path"] == "/v1/files" and sent["form"] == {"purpose": "assistants"}
    digest = hashlib.sha256(content).hexdigest()
    assert [(f["field"], f["bytes"], f["sha256"]) for f in sent["files"]] == [
        ("file", len(content), digest)]
    row = site.call(call_id)
    assert row["status"] == "succeeded", row
    with sqlite3.connect(site.db_path) as conn:
        artifacts = conn.execute("SELECT field, bytes, sha256 FROM openai_django_artifact "
                                 "WHERE call_id = ?", (row["id"],)).fetchall()
    assert ("file", len(content), digest) in artifacts
    print(f"\n[{kind}] chunked JSON ({len(raw)} B in 7-byte chunks) and multipart "
          f"({len(multipart)} B in 64 KiB chunks) read, forwarded and recorded")


# Checkpoints are taken on time by the process's checkpointer thread, not when an event
# arrives: events relayed just before an upstream stall are saved within one interval too.
def test_events_relayed_before_an_upstream_stall_are_checkpointed(gateway_site,
                                                                  crash_upstream):
    site = gateway_site(STREAM_CHECKPOINT_SECONDS=CHECKPOINT)
    server = site.start_server("granian")
    # 10 events at once, then the upstream thinks for 30 s (a reasoning model, a tool call).
    crash_upstream.configure(events=EVENTS, gap_ms=0, ttft_ms=0)
    crash_upstream.fault(path="/v1/chat/completions", kind="hang_stream", after=10,
                         seconds=30, times=1)
    stream = EventStream(server, site.headers)
    stream.read_until(10)
    time.sleep(CHECKPOINT + GAP + SLACK + 0.5)
    server.kill(signal.SIGKILL)
    stream.drain()
    saved = site.call(stream.call_id)["stream_events"] or []
    print(f"\n[granian] stall: client had {len(stream.events)} events for "
          f"{(CHECKPOINT + GAP + SLACK + 0.5) * 1000:.0f} ms before the kill; record holds "
          f"{len(saved)}")
    assert len(saved) == len(stream.events)
