"""Group commit: the recorder's rows of concurrent calls are written in shared transactions.

Why: with many request threads each committing its own INSERT and UPDATE, SQLite serialises
them on its write lock, and a thread that finds the lock taken sleeps in SQLite's busy handler
(a millisecond or more) while holding a request. Measured on two cores at 64 concurrent calls,
recording cost a millisecond of CPU per call more than not recording.

How (the classic leader/follower group commit, no extra thread): a thread with a statement to
write queues it; if no other thread of the process is writing, it becomes the leader and writes
everything queued (its own statement first among them) in one transaction with
``executemany``, then wakes the others. Threads that arrive while a leader writes wait; the
next leader takes all of them at once. Alone (concurrency 1) a call writes its own statement
at once, in its own thread: no hand-off, no added latency.

What it keeps: **the write-ahead record**. ``submit`` returns only after the transaction holding
the row has committed (or raises the database's error, e.g. the IntegrityError of a concurrent
Idempotency-Key), so the gateway asks the upstream only once the call's row is durable (as
durable as the database makes a commit: WAL with ``synchronous=NORMAL`` on SQLite survives a
process crash, not a power cut). The finish is waited for as well, so a client that reads its
call after the answer sees it finished.

When it steps aside: a caller inside a transaction (``atomic``) writes alone, in that
transaction. Enabled by ``OPENAI_DJANGO["WRITER"] = True``.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import DatabaseError, connections, transaction

from openai_django import fairness

try:
    import fcntl
except ImportError:  # Windows: no flock; SQLite's own locking alone
    fcntl = None

logger = logging.getLogger("openai_django.writer")

MAX_BATCH = 256


@dataclass
class _Item:
    sql: str
    params: list
    kind: str  # "insert" statements run before "update" ones in a batch
    finished: bool = False
    lead: bool = False  # handed the writing of the next batch
    error: BaseException | None = None
    wake: object = None  # a held lock its thread waits on; released to wake it
    then: tuple = ()  # (sql, params) pairs written right after it, in its transaction


class Writer:
    """Group commit for one database alias in one process."""

    def __init__(self, alias):
        self.alias = alias
        self._mutex = threading.Lock()
        self._pending = []
        self._writing = False
        self._file_lock = None  # SQLite: the lock file shared by every process (see below)

    def submit(self, sql, params, *, kind, then=()):
        """Write one statement, batched with those of concurrent callers; returns once it is
        committed, or raises its error. ``then``: ``(sql, params)`` pairs committed in the same
        transaction as it, or not at all (a call's request body kept apart, see
        models.RequestBody).

        Each waiting thread sleeps on a lock of its own and is woken exactly once: when its
        statement is committed, or when it is handed the next batch to write. (The first
        version woke every waiting thread after every batch: at 32 threads a process, most
        woke only to sleep again, and the wake-ups cost more CPU than the writes.)
        """
        with fairness.outside():  # waiting for a commit is not a turn at the gateway's Python
            return self._submit(sql, params, kind, then)

    def _submit(self, sql, params, kind, then=()):
        item = _Item(sql, params, kind, then=then)
        with self._mutex:
            self._pending.append(item)
            if self._writing:
                item.wake = threading.Lock()
                item.wake.acquire()
            else:
                self._writing = True
                item.lead = True
        if not item.lead:
            item.wake.acquire()  # released by the leader: committed, or our turn to lead
        if item.lead:
            self._lead(item)
        if item.error is not None:
            raise item.error
        return item

    def _lead(self, item):
        """Write one batch (``item``'s own statement is its first), wake its callers and hand
        the next batch, if any is waiting, to the oldest waiter."""
        with self._mutex:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        try:
            self._write(batch)
        except BaseException as exc:
            for other in batch:
                other.error = other.error or exc
        with self._mutex:
            for other in batch:
                other.finished = True
            following = self._pending[0] if self._pending else None
            if following is None:
                self._writing = False
            else:
                following.lead = True
        for other in batch:
            if other is not item:
                other.wake.release()
        if following is not None:
            following.wake.release()

    def _write(self, batch):
        conn = connections[self.alias]
        with self._cross_process_lock(conn):
            self._write_batch(conn, batch)

    def _cross_process_lock(self, conn):
        """SQLite: one writing process at a time, queued by the kernel.

        SQLite has a single write lock per database. A process that finds it taken sleeps in
        SQLite's busy handler, 1, 2, 5, 10 ... 100 ms at a time, and everything queued behind
        its batch waits too: with two worker processes at 64 concurrent calls that was the
        whole tail (p99 1.3 s against a p50 of 76 ms). An ``flock`` on a file beside the
        database is taken instead before each batch: a waiting process blocks in the kernel
        and wakes the moment the other releases it. The kernel drops the lock of a process
        that dies (``kill -9``), and SQLite rolls back its unfinished transaction, whose
        callers had not asked the upstream yet (they wait for the commit). Writers outside
        the writer (the admin, a Celery worker without ``WRITER``) still use SQLite's own
        locking with its busy timeout.
        """
        lock = self._file_lock
        # Opened anew in a forked child (an inherited descriptor shares the parent's lock)
        # and when the database's name changed (a test database).
        if lock is None or lock.key != (os.getpid(), conn.settings_dict.get("NAME")):
            if lock is not None:
                lock.close()
            lock = self._file_lock = _FileLock.for_connection(conn)
        return lock

    def _write_batch(self, conn, batch):
        if len(batch) == 1:
            try:
                self._write_one(conn, batch[0])
            except BaseException as exc:
                batch[0].error = exc
            return
        try:
            with _transaction(conn, self.alias):
                for group in _groups(batch):
                    executemany(conn, group[0].sql, [item.params for item in group])
                    for item in group:
                        for sql, params in item.then:
                            execute(conn, sql, params)
            return
        except DatabaseError:
            pass
        # One statement failed the batch (a duplicate idempotency key, say): run them one by
        # one so that only its own caller gets the error.
        for item in sorted(batch, key=lambda i: i.kind != "insert"):
            try:
                self._write_one(conn, item)
            except BaseException as exc:
                item.error = exc

    def _write_one(self, conn, item):
        if not item.then:
            execute(conn, item.sql, item.params)
            return
        with _transaction(conn, self.alias):
            execute(conn, item.sql, item.params)
            for sql, params in item.then:
                execute(conn, sql, params)


@contextmanager
def sqlite_writers_lock(path):
    """The writers' lock of the SQLite database at ``path`` (the ``NAME`` of its settings),
    tried once without waiting: yields whether it is held. The WAL checkpointer
    (sqlite_wal.py) takes it for a FULL checkpoint, which holds SQLite's write lock while it
    copies and syncs: a writer then waits in the kernel and wakes when it ends, instead of
    sleeping in SQLite's busy handler."""
    lock = _FileLock(path + ".writer-lock" if fcntl is not None else None, path)
    try:
        yield lock.try_acquire()
    finally:
        lock.release()
        lock.close()


class _FileLock:
    """An exclusive ``flock`` on ``<database>.writer-lock`` held while a batch is written
    (SQLite files only; elsewhere, and where the file cannot be made, a no-op)."""

    def __init__(self, path, name=None):
        self.path = path
        self.key = (os.getpid(), name)
        self.fd = None
        self.held = False
        if path is not None:
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                logger.warning("writer: no cross-process lock (%s): %s", path, exc)

    @classmethod
    def for_connection(cls, conn):
        name = conn.settings_dict.get("NAME")
        path = str(name or "")
        if (conn.vendor != "sqlite" or fcntl is None or not path or path == ":memory:"
                or path.startswith("file:") or "mode=memory" in path):
            return cls(None, name)
        return cls(path + ".writer-lock", name)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def try_acquire(self):
        """Take the lock if nobody holds it; whether it is held (True where there is none)."""
        if self.fd is None:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def release(self):
        if self.fd is not None and self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False

    def __exit__(self, *exc_info):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False


def execute(conn, sql, params):
    """``cursor.execute(sql, params)`` on ``conn`` (a Django connection); the row count.

    On SQLite, when nothing observes the connection's queries (no ``DEBUG`` query log, no
    ``execute_wrapper``, no ``assertNumQueries``), the statement goes straight to the
    ``sqlite3`` connection with its placeholders converted once per statement, errors still
    mapped to Django's. Django's cursor wrapper converts ``%s`` to ``?`` with a regular
    expression on every execution: for the record's 58-column INSERT that was 80 of its 190
    µs (measured with ``/tmp`` micro-benchmark, 2,000 executions, 2026-12-01).
    """
    if _direct(conn):
        with conn.wrap_database_errors:
            cursor = conn.connection.execute(_qmark(sql), params)
            try:
                return cursor.rowcount
            finally:
                cursor.close()
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@contextmanager
def _transaction(conn, alias):
    """One transaction around a batch: ``transaction.atomic(using=alias)``, or on SQLite, when
    nothing observes the connection (see :func:`execute`), ``BEGIN IMMEDIATE`` and
    ``COMMIT`` on the ``sqlite3`` connection itself (``ROLLBACK`` if a statement fails).

    The writer is never inside an ``atomic`` block (a caller in one writes alone), so the
    atomic's savepoint and autocommit bookkeeping only cost: an INSERT in ``atomic`` took
    121-140 us of CPU against 22 us between a plain ``BEGIN IMMEDIATE`` and ``COMMIT`` (2,000
    each, one thread, 2026-12-03); a batch of the record's statements 36-50 us less (2 + 2:
    729-756 -> 693-706 us, 10 + 10: 1,778-1,826 -> 1,726-1,752 us, ``python -m
    bench.writer_batch_bench 2,10 150``, two runs each way, interleaved). Under load most
    batches hold more than one statement.
    """
    if not _direct(conn) or conn.in_atomic_block or conn.connection.in_transaction:
        with transaction.atomic(using=alias):
            yield
        return
    raw = conn.connection
    with conn.wrap_database_errors:
        raw.execute("BEGIN IMMEDIATE")
    try:
        yield
        with conn.wrap_database_errors:
            raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:  # a failed COMMIT may leave it open, as a failed statement
            try:
                raw.execute("ROLLBACK")
            except Exception:
                logger.exception("writer: the failed batch's ROLLBACK failed")
        raise


def executemany(conn, sql, param_list):
    if _direct(conn):
        with conn.wrap_database_errors:
            conn.connection.executemany(_qmark(sql), param_list).close()
        return
    with conn.cursor() as cursor:
        cursor.executemany(sql, param_list)


def _direct(conn):
    if conn.vendor != "sqlite" or conn.queries_logged or conn.execute_wrappers:
        return False
    if conn.connection is None:
        conn.ensure_connection()
    conn.validate_no_broken_transaction()
    return True


def _plain_adapters():
    """Adapters for ``None``, ``bytes`` and ``bool`` in ``sqlite3``'s registry, each binding
    what the fallback would (only where the site registered none of its own).

    ``sqlite3`` binds an exact ``int``, ``float``, ``str`` or ``bytearray`` as it is, and
    looks every other parameter up in its adapter registry: a miss then tries
    ``__adapt__`` and ``__conform__``, two formatted and discarded ``AttributeError``s. The
    record's 58-column INSERT has about 19 ``None`` parameters, so a recorded call raised 38
    (callgrind, 200 recorded chat calls in one process: 2.61 M -> 2.53 M instructions a call).
    A registry hit binds the same value: ``None`` as NULL, ``bytes`` as a BLOB, ``True``
    and ``False`` as the integers 1 and 0 (the fallback binds a ``bool`` as the ``int`` it
    is; a recorded call binds five, ten errors more: see managers._converter's figure).
    """
    import sqlite3

    for kind, adapter in ((type(None), {}.get), (bytes, bytes), (bool, int)):
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(kind, adapter)


_plain_adapters()

_QMARK = {}


def _qmark(sql):
    converted = _QMARK.get(sql)
    if converted is None:
        from django.db.backends.sqlite3.base import FORMAT_QMARK_REGEX

        converted = _QMARK[sql] = FORMAT_QMARK_REGEX.sub("?", sql).replace("%%", "%")
    return converted


def _groups(batch):
    """Inserts first (an update in the batch may be for a row inserted in it), then runs of
    the same statement, in arrival order."""
    ordered = [i for i in batch if i.kind == "insert"] + [i for i in batch if i.kind != "insert"]
    groups, current = [], []
    for item in ordered:
        if current and (item.sql != current[0].sql):
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    return groups


_writers = {}
_writers_lock = threading.Lock()


def get_writer(alias):
    writer = _writers.get(alias)
    if writer is None:
        with _writers_lock:
            writer = _writers.setdefault(alias, Writer(alias))
    return writer
