"""SQLite's WAL checkpoints run in the checkpointer thread (openai_django/sqlite_wal.py), not in
the request that commits: the request connections' auto-checkpoint is only a safety net, the
WAL is copied into the database by the thread, and a process killed in the middle of one of
its checkpoints loses no committed call (SQLite recovers the WAL at the next open)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from django.db import connection

from openai_django import sqlite_wal
from openai_django.models import Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"PAGES": 40, "FULL_PAGES": 160, "INTERVAL": 0.01, "FULL_WAIT": 0.02}


def _call(user, size=2000):
    return Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                user=user, request_body={"model": "gpt-4o-mini", "pad": "x" * size})


@pytest.fixture
def small_checkpoints(settings):
    """Checkpoints every 40 pages, on a connection opened under that setting."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "SQLITE_CHECKPOINT": SMALL}
    sqlite_wal.checkpointer.stop()
    connection.close()
    connection.ensure_connection()
    yield os.path.abspath(connection.settings_dict["NAME"])
    sqlite_wal.checkpointer.stop()
    connection.close()


def _wal_with_rows(path, rows):
    """A WAL database at ``path`` whose log holds ``rows`` rows of 3 KB, none of them copied
    (no auto-checkpoint): ``(path, autocommit connection)``."""
    path = str(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x BLOB)")
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3000),))
    return path, conn


def test_wal_frames_reads_what_sqlite_reports(tmp_path):
    path, conn = _wal_with_rows(tmp_path / "w.sqlite3", 20)
    total, copied = sqlite_wal.wal_frames(path)
    other = sqlite3.connect(path, isolation_level=None)
    busy, log_frames, checkpointed = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, log_frames) == (0, total) and total >= 20 and copied == 0
    assert sqlite_wal.wal_frames(path) == (total, checkpointed) == (total, total)
    conn.execute("INSERT INTO t VALUES (1)")  # the next writer starts the log over
    assert sqlite_wal.wal_frames(path)[0] < total
    conn.close()
    other.close()
    assert sqlite_wal.wal_frames(str(tmp_path / "none.sqlite3")) is None


def test_requests_leave_checkpoints_to_the_thread(small_checkpoints, user):
    path = small_checkpoints
    raw = connection.connection
    # The connection Django opened defers to the thread (its own mark: 4 x FULL_PAGES).
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 4 * SMALL["FULL_PAGES"]
    db = sqlite_wal.checkpointer.databases()[path]
    # The thread may already be copying what earlier tests left in the WAL: count from here.
    before = db.stats["passive"] + db.stats["full"]
    for _ in range(60):
        Call.objects.record_new(_call(user))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and db.stats["passive"] + db.stats["full"] == before:
        time.sleep(0.02)
    # PASSIVE, or FULL if the WAL already held FULL_PAGES frames from earlier tests.
    assert db.stats["passive"] + db.stats["full"] > before, db.stats
    # The frames were copied into the database file by the thread's checkpoints (the file
    # need not grow: earlier tests' deleted rows left free pages to reuse).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        total, copied = sqlite_wal.wal_frames(path)
        if total - copied < SMALL["PAGES"]:
            break
        time.sleep(0.02)
    assert total - copied < SMALL["PAGES"], (total, copied)
    assert Call.objects.count() == 60


def test_steady_writes_get_a_full_checkpoint_and_the_log_starts_over(small_checkpoints, user):
    """Writes that never pause: passive passes alone never end between two commits, so past
    FULL_PAGES the thread takes the write lock briefly and the WAL starts over (it does not
    grow for good)."""
    path = small_checkpoints
    db = sqlite_wal.checkpointer.databases()[path]
    restarted = False
    last_total = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (db.stats["full"] and restarted):
        Call.objects.record_new(_call(user, size=6000))
        total = sqlite_wal.wal_frames(path)[0]
        restarted = restarted or total < last_total
        last_total = total
    assert db.stats["full"] >= 1 and restarted, db.stats


def test_setting_none_leaves_sqlite_its_own_checkpoints(settings):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "SQLITE_CHECKPOINT": None}
    connection.close()
    connection.ensure_connection()
    try:
        assert connection.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        connection.close()


CHILD = textwrap.dedent('''
    import os, sys, time
    import django
    django.setup()
    from django.conf import settings
    from openai_django import sqlite_wal
    from openai_django.models import Call
    from django.contrib.auth import get_user_model

    def say(line):  # one write a line: the two threads' lines never interleave
        os.write(1, (line + "\\n").encode())

    original = sqlite_wal._Database.checkpoint
    def traced(self, mode):
        say(f"begin {mode}")
        result = original(self, mode)
        say(f"end {mode} {result}")
        return result
    sqlite_wal._Database.checkpoint = traced
    user = get_user_model().objects.get(pk=int(sys.argv[1]))
    pad = "y" * 60000
    i = 0
    while True:
        call = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                    user=user, request_body={"i": i, "pad": pad})
        Call.objects.record_new(call)  # autocommit: committed when it returns
        say(f"committed {call.pk.hex}")
        i += 1
''')


def test_a_process_killed_during_a_checkpoint_loses_no_committed_call(small_checkpoints,
                                                                      user, tmp_path):
    path = small_checkpoints
    connection.close()  # the child writes; this test only reads afterwards
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # The child runs the demo's settings on this test's database, with small checkpoints.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "child_settings",
           "DATABASE_URL": f"sqlite:///{path}"}
    (tmp_path / "child_settings.py").write_text(
        "from project.settings import *  # noqa\n"
        f"OPENAI_DJANGO = {{**OPENAI_DJANGO, 'SQLITE_CHECKPOINT': {SMALL!r}}}\n"
        f"DATABASES['default']['NAME'] = {path!r}\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    committed, mid_checkpoint_kills = set(), 0
    for _attempt in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(user.pk)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            seen = 0
            in_checkpoint = False
            for line in proc.stdout:
                word, *rest = line.split()
                if word == "committed":
                    committed.add(rest[0])
                    seen += 1
                elif word == "begin" and seen >= 20:
                    in_checkpoint = True
                    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of this checkpoint
                    break
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        rest = proc.stdout.read()
        assert in_checkpoint, (proc.returncode, seen, rest[-500:], proc.stderr.read()[-3000:])
        # Lines the child wrote before it died: a commit reported after the kill signal was
        # sent is a commit too; an "end" means the checkpoint finished before the kill.
        for line in rest.splitlines():
            if line.startswith("committed"):
                committed.add(line.split()[1])
        if not any(line.startswith("end") for line in rest.splitlines()):
            mid_checkpoint_kills += 1
        check = sqlite3.connect(path)
        try:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            ids = {row[0] for row in check.execute("SELECT id FROM openai_django_call")}
        finally:
            check.close()
        assert committed <= ids, sorted(committed - ids)[:10]
        if mid_checkpoint_kills >= 3:
            break
    print("kills in a checkpoint:", mid_checkpoint_kills, "committed:", len(committed))
    assert mid_checkpoint_kills >= 3, mid_checkpoint_kills
    assert len(committed) >= 60


def test_a_full_checkpoint_waits_for_the_writers_lock(tmp_path):
    """A FULL checkpoint holds SQLite's write lock while it copies and syncs: it is taken only
    when no group-commit batch is being written (writer.py's lock file), so a writer waits
    for it in the kernel, not in SQLite's busy handler."""
    from openai_django import writer

    path, conn = _wal_with_rows(tmp_path / "w.sqlite3", 200)
    total, copied = sqlite_wal.wal_frames(path)
    assert total >= SMALL["FULL_PAGES"] and copied == 0
    # FULL_REMAINDER above the log's size: no passive pass first, the FULL alone.
    database = sqlite_wal._Database(path, sqlite_wal.options({**SMALL,
                                                              "FULL_REMAINDER": total}))
    try:
        with writer.sqlite_writers_lock(path) as held:  # a batch being written
            assert held
            assert database.tick() is None
            assert sqlite_wal.wal_frames(path) == (total, 0)  # nothing copied meanwhile
            assert database.stats["full"] == 0
        busy, log_frames, checkpointed = database.tick()
        assert database.stats["full"] == 1
        assert (busy, log_frames, checkpointed) == (0, total, total)
    finally:
        database.close()
        conn.close()


class _Writing(threading.Thread):
    """Commits a row every millisecond on a connection of its own until stopped, each commit
    under the writers' lock as a group-commit batch takes it (writer.py)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.halt = threading.Event()
        self.commits = 0

    def run(self):
        from openai_django import writer

        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        lock = writer._FileLock(self.path + ".writer-lock", self.path)
        try:
            while not self.halt.is_set():
                with lock:
                    conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3000),))
                self.commits += 1
                time.sleep(0.001)
        finally:
            lock.close()
            conn.close()


def test_a_full_checkpoint_copies_only_what_passive_passes_left(tmp_path):
    """Before the FULL pass, which every writer waits for, PASSIVE passes (no lock) copy the
    log down to at most FULL_REMAINDER frames (three passes at most); then the FULL copies
    those and the log starts over. Commits go on all along."""
    path, conn = _wal_with_rows(tmp_path / "r.sqlite3", 400)
    total, copied = sqlite_wal.wal_frames(path)
    assert total >= 400 and copied == 0
    database = sqlite_wal._Database(path, sqlite_wal.options({**SMALL, "FULL_REMAINDER": 64}))
    passes = []  # one list a tick: (mode, frames left to copy before the pass, after it)
    checkpoint = database.checkpoint

    def observed(mode):  # the real pass, with what it found left and what it left
        before = sqlite_wal.wal_frames(path)
        result = checkpoint(mode)
        after = sqlite_wal.wal_frames(path)
        passes[-1].append((mode, before[0] - before[1], after[0] - min(after)))
        return result

    database.checkpoint = observed
    writing = _Writing(path)
    writing.start()
    result = None
    try:
        # A tick finds the writers' lock taken while a commit is written, or finds every frame
        # copied by its passes (the log then starts over without a FULL): ticks until a FULL
        # pass ran, or the log was copied whole.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            passes.append([])
            result = database.tick()
            if database.stats["full"] or (result is not None and result[2] >= result[1]):
                break
    finally:
        writing.halt.set()
        writing.join(10)
        database.close()
    first = passes[0][0]
    assert first[0] == "PASSIVE" and first[1] >= total
    for tick in passes:
        modes = [mode for mode, _, _ in tick]
        assert modes.count("PASSIVE") <= 3 and modes.count("FULL") <= 1, passes
    tick = passes[-1]
    if database.stats["full"]:  # the passes left a remainder: the FULL took it all
        # (A tick that found no more than FULL_REMAINDER left, its passes' work done by an
        # earlier tick whose FULL found the writers' lock taken, goes straight to the FULL.)
        assert tick[-1][0] == "FULL", passes
        if len(tick) > 1:  # what the tick's last PASSIVE pass left, unless it ran out of passes
            assert tick[-2][2] <= 64 or len(tick) == 4, passes
        assert tick[-1][1] < first[1], passes  # the FULL copied a part of the log, not all
        assert result[0] == 0 and result[2] == result[1], result  # no writer kept it busy
    assert database.stats["passive"] >= 1
    conn.execute("INSERT INTO t VALUES (?)", (b"next",))
    assert sqlite_wal.wal_frames(path)[0] < total  # the log started over
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 401 + writing.commits
    conn.close()


def test_reading_the_wal_index_keeps_the_connections_locks(tmp_path):
    """SQLite's connections hold POSIX locks on the -shm file, which a process loses when it
    closes any descriptor of that file: reading the wal-index must not (it did, and another
    process then re-initialised the wal-index under a live connection: a SIGBUS in a test run).
    Another process probes the lock SQLite keeps while a connection is open (the "DMS" byte)."""
    path = str(tmp_path / "w.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    probe = textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({path + "-shm"!r}, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        except OSError:
            print("held")
        else:
            print("free")
    """)

    def dms():
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert dms() == "held"
    for _ in range(3):
        assert sqlite_wal.wal_frames(path)[0] >= 1
    assert dms() == "held"
    conn.execute("INSERT INTO t VALUES (2)")
    conn.close()


def test_a_wal_that_ran_long_is_cut_back_when_the_log_starts_over(small_checkpoints, user):
    """A reader's snapshot holds the log (no checkpoint can finish, so it cannot start over)
    while writes go on: the file grows past KEEP_BYTES. Once the reader is gone and the
    thread has copied the log, the next commit starts it over and cuts the file back."""
    path = small_checkpoints
    raw = connection.connection
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    keep = SMALL["FULL_PAGES"] * (page_size + 24) + 32  # FULL_PAGES frames, by default
    assert raw.execute("PRAGMA journal_size_limit").fetchone()[0] == keep
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM openai_django_call").fetchone()  # a snapshot held
    try:
        while os.path.getsize(path + "-wal") < 3 * keep:
            Call.objects.record_new(_call(user, size=6000))
    finally:
        reader.execute("COMMIT")
        reader.close()
    grown = os.path.getsize(path + "-wal")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        Call.objects.record_new(_call(user, size=100))
        if os.path.getsize(path + "-wal") <= keep:
            break
        time.sleep(0.05)
    assert grown >= 3 * keep and os.path.getsize(path + "-wal") <= keep, (
        grown, os.path.getsize(path + "-wal"), keep)
