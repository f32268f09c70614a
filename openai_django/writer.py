"""Group commit: one thread per process writes the recorder's rows in batches.

Why: with many request threads each committing its own INSERT and UPDATE, SQLite serialises
them on its write lock, and a thread that finds the lock taken sleeps in SQLite's busy handler
(a millisecond or more) while holding a request. Measured on two cores at 64 concurrent calls,
recording cost a millisecond of CPU per call more than not recording. Here the request threads
only hand their statements (parameters already bound) to one writer, which runs everything
waiting in one transaction with ``executemany``: one commit for many calls, no lock fights
inside the process.

What it keeps: **the write-ahead record**. ``submit(..., wait=True)`` returns only after the
transaction holding the row has committed (or raises the database's error, e.g. the
IntegrityError of a concurrent Idempotency-Key), so the gateway still asks the upstream only
once the call's row is durable (as durable as the database makes a commit: WAL with
``synchronous=NORMAL`` on SQLite survives a process crash, not a power cut). The finish is
waited for as well, so a client that reads its call after the answer sees it finished.

When it steps aside: a caller inside a transaction (``atomic``) writes in its own connection,
because the writer's connection could not see that transaction's rows and, on SQLite, would
wait on its lock forever. Enabled by ``OPENAI_DJANGO["WRITER"] = True``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, transaction

logger = logging.getLogger("openai_django.writer")

MAX_BATCH = 256


@dataclass
class _Item:
    sql: str
    params: list
    kind: str  # "insert" statements run before "update" ones in a batch
    done: threading.Event | None = None
    error: BaseException | None = None
    rowcount: int = 0
    extra: dict = field(default_factory=dict)


class Writer:
    """The writer of one database alias in one process (restarted after a fork)."""

    def __init__(self, alias):
        self.alias = alias
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._pid = None
        self._lock = threading.Lock()

    def _ensure_thread(self):
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # a forked child starts empty
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"openai-django-writer-{self.alias}")
                self._thread.start()

    def submit(self, sql, params, *, kind, wait=True):
        """Queue one statement; with ``wait`` block until it is committed (or raise)."""
        item = _Item(sql, params, kind, threading.Event() if wait else None)
        self._ensure_thread()
        self._queue.put(item)
        if wait:
            item.done.wait()
            if item.error is not None:
                raise item.error
        return item

    def _run(self):
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except BaseException:  # noqa: BLE001 - the thread must survive anything
                logger.exception("The recorder's writer failed a batch of %s", len(batch))
            finally:
                for item in batch:
                    if item.done is not None:
                        item.done.set()

    def _write(self, batch):
        conn = connections[self.alias]
        try:
            with transaction.atomic(using=self.alias), conn.cursor() as cursor:
                for group in _groups(batch):
                    cursor.executemany(group[0].sql, [item.params for item in group])
            return
        except DatabaseError as exc:
            if len(batch) == 1:
                batch[0].error = exc
                self._recover(conn)
                return
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for item in batch:
                item.error = exc
            self._recover(conn)
            return
        # One statement failed the batch (a duplicate idempotency key, say): run them one by
        # one so that only its own caller gets the error.
        self._recover(conn)
        for item in sorted(batch, key=lambda i: i.kind != "insert"):
            try:
                with transaction.atomic(using=self.alias), conn.cursor() as cursor:
                    cursor.execute(item.sql, item.params)
            except BaseException as exc:  # noqa: BLE001 - handed to its waiter
                item.error = exc
                self._recover(conn)

    @staticmethod
    def _recover(conn):
        """After an error, make sure the next batch starts on a usable connection."""
        if conn.connection is not None and not conn.is_usable():
            conn.close()


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


def usable(alias):
    """Whether the caller's writes may go through the writer (not inside a transaction)."""
    return not connections[alias].in_atomic_block
