"""SQLite's WAL checkpoints in a thread of their own, never in a request's time.

Why: in WAL mode SQLite copies the log back into the database file (a *checkpoint*) every 1000
pages by default, and it does so in whichever connection commits the transaction that crossed
the mark, before that commit returns: the committing request waits for the copy of up to a
thousand pages and two ``fdatasync`` calls (the WAL before the copy, the database after). A
recorded call writes about 23 pages (the row and its indexes, at the start and at the finish),
so one call in ~45 paid a checkpoint: measured here at c=1 under wrk, 2% of the calls, each
10-60 ms on this machine's disk (an fdatasync alone 5-11 ms) and 40-160 ms when other
processes share the disk. That was the c=1 tail of the benchmark (issue 14).

How: every SQLite connection Django opens in WAL mode (``connection_created``) gets its
auto-checkpoint pushed back to a safety net (``FALLBACK_PAGES``, only reached if this thread
is not running), and the file is watched by one daemon thread per process, which reads the
WAL's frame counts from the wal-index (the ``-shm`` file, whose header layout is documented in
https://www.sqlite.org/walformat.html) every ``INTERVAL`` seconds and, on its own connection:

* once ``PAGES`` frames wait to be copied, runs a PASSIVE checkpoint: it copies what it can
  without taking any lock a writer or a reader waits for, and syncs as SQLite always does
  (``synchronous=NORMAL``: the WAL before, the database after), with the GIL released;
* once the WAL holds ``FULL_PAGES`` frames and is still not fully copied (under steady load a
  PASSIVE pass never ends between two commits, so the log would never start over and grow for
  good), runs a FULL checkpoint: it takes the write lock only if it gets it within
  ``FULL_WAIT`` seconds (else it stays PASSIVE and tries later), copies the few frames the
  passive passes left and syncs, so that the next writer starts the log over. Until at most
  ``FULL_REMAINDER`` frames are left to copy it first runs PASSIVE passes (up to three),
  without the lock: the FULL pass, which every writer waits for, then copies a few hundred
  frames, not thousands. Measured at c=1 under wrk (two granian workers, recording on): a
  FULL pass held the writers 6-14 ms, once 212 ms, copying the 1,400-4,400 frames the last
  PASSIVE pass had left; that one stall (at c=1, wrk counts the requests a stalled client
  would have sent, about one for each mean latency of the stall) made the run's p99 111 ms.

What a request still pays: the first commit after a complete checkpoint starts the log over
and syncs the WAL header (one fdatasync, as SQLite requires for safety), once per ``PAGES`` or
``FULL_PAGES`` frames instead of a whole checkpoint every 1000; and a writer arriving during a
FULL checkpoint's lock waits for it (once per ``FULL_PAGES`` frames).

The WAL file: SQLite reuses it from its start once the log starts over and never shrinks it,
so a log that ran long once (FULL passes that kept missing the lock under load) would leave a
file that size for good. Each connection's ``journal_size_limit`` is set to ``KEEP_BYTES``
(default: ``FULL_PAGES`` frames): the first commit after a restart cuts the file back to it.

What it keeps: durability and atomicity are SQLite's own: a checkpoint only copies committed
frames, and a process killed during one leaves the WAL in place for the next connection to
recover (tests/test_sqlite_wal.py kills one in the middle and finds every committed call).

``OPENAI_DJANGO["SQLITE_CHECKPOINT"] = None`` leaves SQLite's own auto-checkpoint as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field

from openai_django import writer
from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.sqlite_wal")

DEFAULTS = {"PAGES": 4000, "FULL_PAGES": 16000, "INTERVAL": 0.1, "FULL_WAIT": 0.02,
            "FULL_REMAINDER": 256, "FALLBACK_PAGES": None, "KEEP_BYTES": None}

# The wal-index header (walformat.html, section 2.1): mxFrame is a native-order u32 at byte 16
# of the first copy of the header, nBackfill one at byte 96 (the checkpoint information that
# follows the two 48-byte copies of the header); iVersion (3007000) at byte 0, isInit at 12.
_SHM_VERSION = 3007000
_SHM_HEAD = struct.Struct("=I8xB3xI")  # iVersion, isInit, mxFrame
_BACKFILL = struct.Struct("=I")


def options(value=None):
    """The ``SQLITE_CHECKPOINT`` setting with its defaults filled in, or None if it is off."""
    value = app_settings.SQLITE_CHECKPOINT if value is None else value
    if not value:
        return None
    merged = {**DEFAULTS, **value}
    if merged["FALLBACK_PAGES"] is None:
        merged["FALLBACK_PAGES"] = 4 * merged["FULL_PAGES"]
    return merged


def wal_bytes(frames, page_size):
    """The size of a WAL file of ``frames`` frames: its 32-byte header, then each page behind
    a 24-byte frame header (walformat.html, section 1)."""
    return 32 + frames * (page_size + 24)


_shm_fds = {}  # (pid, -shm path) -> (descriptor, inode): opened once, never closed
_shm_lock = threading.Lock()


def _shm_fd(shm_path):
    """A descriptor of the wal-index file, opened once per process and file and never closed.

    SQLite holds POSIX advisory locks on the -shm file, and POSIX drops every lock a process
    holds on a file when the process closes *any* descriptor of it: a read that opened and
    closed the file released the locks of the process's SQLite connections, so another
    process took itself for the first connection and re-initialised (truncated) the wal-index
    they had mapped: a SIGBUS in the next commit (seen in a test run), or worse. A new inode
    (the database recreated) gets a new descriptor; the old one stays open.
    """
    key = (os.getpid(), shm_path)
    inode = os.stat(shm_path).st_ino
    entry = _shm_fds.get(key)
    if entry is None or entry[1] != inode:
        with _shm_lock:
            entry = _shm_fds.get(key)
            if entry is None or entry[1] != inode:
                fd = os.open(shm_path, os.O_RDONLY | os.O_CLOEXEC)
                entry = _shm_fds[key] = (fd, os.fstat(fd).st_ino)
    return entry[0]


def wal_frames(path):
    """``(frames in the WAL, frames already copied to the database)`` read from the wal-index
    of the database at ``path`` without a lock (a hint: a torn read only delays a checkpoint);
    None when there is no readable wal-index."""
    try:
        data = os.pread(_shm_fd(path + "-shm"), 100, 0)
    except OSError:
        return None
    if len(data) < 100:
        return None
    version, is_init, mx_frame = _SHM_HEAD.unpack_from(data, 0)
    if version != _SHM_VERSION or not is_init:
        return None
    return mx_frame, _BACKFILL.unpack_from(data, 96)[0]


@dataclass
class _Database:
    path: str
    opts: dict
    conn: sqlite3.Connection | None = None
    full_after: float = 0.0  # monotonic time before which no FULL is tried again
    full_backoff: float = 0.0
    stats: dict = field(default_factory=lambda: {"passive": 0, "full": 0, "busy": 0,
                                                 "errors": 0, "seconds": 0.0})

    def connect(self):
        if self.conn is None:
            # Autocommit, no busy wait but the one FULL asks for; NORMAL: the checkpoint
            # syncs the WAL before copying and the database after (SQLite's own rule).
            self.conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA wal_autocheckpoint=0")
        return self.conn

    def tick(self):
        frames = wal_frames(self.path)
        if frames is None:
            return None
        total, copied = frames
        if copied > total:  # the log started over since nBackfill was read
            copied = 0
        opts = self.opts
        if total >= opts["FULL_PAGES"] and copied < total:
            now = time.monotonic()
            if now >= self.full_after:
                # Most of the log copied first, without the lock: the FULL then copies only
                # what came meanwhile, and the writers wait for two syncs of little data.
                passes = 0
                while total - copied > opts["FULL_REMAINDER"] and passes < 3:
                    result = self.checkpoint("PASSIVE")
                    passes += 1
                    frames = wal_frames(self.path)
                    if result is None or result[0] or frames is None:
                        return result  # another checkpoint is running: the next tick
                    total, copied = frames
                    if copied >= total:
                        return result  # all copied: the next writer starts the log over
                # The writers' lock too (writer.py): a batch being written is not kept
                # waiting in SQLite's busy handler, and one arriving waits in the kernel.
                with writer.sqlite_writers_lock(self.path) as held:
                    if not held:
                        return None  # a batch is being written: the next tick tries again
                    result = self.checkpoint("FULL")
                if result is not None and not result[0] and result[2] >= result[1]:
                    self.full_backoff = 0.0
                else:  # a reader or a writer kept it from the end: not every tick again
                    self.full_backoff = min(max(2 * self.full_backoff, opts["INTERVAL"]), 5.0)
                    self.full_after = now + self.full_backoff
                return result
        if total - copied >= opts["PAGES"]:
            return self.checkpoint("PASSIVE")
        return None

    def checkpoint(self, mode):
        conn = self.connect()
        started = time.perf_counter()
        try:
            if mode == "FULL":
                conn.execute(f"PRAGMA busy_timeout={int(self.opts['FULL_WAIT'] * 1000)}")
            busy, log_frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            self.stats["errors"] += 1
            logger.warning("WAL checkpoint (%s) of %s failed: %s", mode, self.path, exc)
            self.close()
            return None
        finally:
            if mode == "FULL":
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA busy_timeout=0")
        self.stats["seconds"] += time.perf_counter() - started
        self.stats[mode.lower()] += 1
        if busy:
            self.stats["busy"] += 1
        return busy, log_frames, copied

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


class Checkpointer:
    """One daemon thread per process that checkpoints the WAL of each watched database."""

    def __init__(self):
        self._lock = threading.Lock()
        self._databases = {}
        self._thread = None
        self._pid = None
        self._stop = threading.Event()

    def watch(self, path, opts):
        path = os.path.abspath(path)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._databases, self._thread, self._pid = {}, None, os.getpid()
                self._stop = threading.Event()
            if path not in self._databases:
                self._databases[path] = _Database(path, opts)
            else:
                self._databases[path].opts = opts
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                name="openai-django-wal-checkpoint",
                                                daemon=True)
                self._thread.start()

    def databases(self):
        with self._lock:
            return dict(self._databases)

    def _run(self, stop):
        # The copy is CPU and disk work a request never waits for: on a small machine the
        # request threads get the cores first (Linux: a thread's own nice value).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not stop.is_set():
            databases = self.databases()
            interval = min((db.opts["INTERVAL"] for db in databases.values()), default=0.1)
            for db in databases.values():
                try:
                    db.tick()
                except Exception:  # never let the thread die: the fallback would take over
                    logger.exception("WAL checkpointer: %s", db.path)
            stop.wait(interval)
        for db in self.databases().values():
            db.close()

    def stop(self, timeout=5.0):
        """Stop the thread (tests; a server's shutdown needs nothing: it is a daemon)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._stop = threading.Event()
            databases, self._databases = self._databases, {}
        if thread is not None:
            thread.join(timeout)
        for db in databases.values():
            db.close()


checkpointer = Checkpointer()


def _database_path(connection):
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or "mode=memory" in name:
        return None
    if name.startswith("file:"):  # a URI filename: the path part
        name = name[5:].split("?", 1)[0]
    return name


def configure(sender=None, connection=None, **kwargs):
    """``connection_created`` receiver: a SQLite connection in WAL mode leaves checkpoints to
    the :data:`checkpointer` (its own auto-checkpoint only a safety net)."""
    if connection is None or connection.vendor != "sqlite":
        return
    opts = options()
    if opts is None:
        return
    path = _database_path(connection)
    if path is None:
        return
    raw = connection.connection
    try:
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            return
        raw.execute(f"PRAGMA wal_autocheckpoint={int(opts['FALLBACK_PAGES'])}")
        # The WAL file cut back to KEEP_BYTES when the log starts over. SQLite reuses the file
        # from its start and never shrinks it: when a FULL pass keeps missing the lock under
        # load the log runs past FULL_PAGES (measured: 90-210 MB at c=64 for a 16,000-frame
        # mark), and the file stayed that size for good. The first commit after the restart
        # truncates it (one ftruncate, only when the file is over the limit).
        keep = opts["KEEP_BYTES"]
        if keep is None:  # FULL_PAGES frames of this database's pages
            keep = wal_bytes(opts["FULL_PAGES"], raw.execute("PRAGMA page_size").fetchone()[0])
        raw.execute(f"PRAGMA journal_size_limit={int(keep)}")
    except sqlite3.Error as exc:
        logger.warning("Could not configure the WAL checkpoints of %s: %s", path, exc)
        return
    checkpointer.watch(path, opts)
