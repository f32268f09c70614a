"""A request thread's database connections are closed when the thread ends.

Why: with persistent connections (``CONN_MAX_AGE``), Django keeps one connection per thread and
closes it only at the start or end of a request in that same thread. A WSGI server that retires
idle threads (granian: after ``--blocking-threads-idle-timeout``, 30 s by default; gunicorn's
gthread keeps its threads) drops the thread with the connection still open, and Django's
``DatabaseWrapper`` is a reference cycle, so the socket closes only when a full garbage
collection happens to run. Measured on PostgreSQL: after a c=64 burst and an idle spell, each
granian worker had 4 threads and 59-114 open connections, and after the next burst PostgreSQL
refused new ones ("remaining connection slots are reserved"); each new thread also opens a new
connection during the burst (about 8 ms each on this machine), in a request's time.

How: when Django opens a connection (``connection_created``), a small object that holds it is
put in a ``threading.local`` of the thread that opened it; when the thread ends, Python clears
its thread-locals and the object is freed by reference counting (it is in no cycle). It does
not close the connection there: that runs while the interpreter tears the thread's state down
(granian's threads are not Python's), and a close that releases the GIL at that moment
crashed granian's workers (segfaults in libpython, seen in the benchmark). It only hands the
DB-API connection to a list, which the next request to finish, in any thread, closes (Django
opens SQLite connections with ``check_same_thread=False``; psycopg's may be closed from any
thread). A connection Django already closed (or replaced) is closed twice, harmlessly.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

from django.core.signals import request_finished

_local = threading.local()
_orphans = []  # DB-API connections of ended threads, closed by the next request to finish


class _Closer:
    __slots__ = ("raw", "wrapper")

    def __init__(self, wrapper):
        self.raw = wrapper.connection
        self.wrapper = weakref.ref(wrapper)

    def __del__(self):
        raw, self.raw = self.raw, None
        wrapper = self.wrapper()
        if raw is None or (wrapper is not None and wrapper.allow_thread_sharing):
            return  # shared with another thread on purpose (a test's live server): theirs too
        _orphans.append(raw)  # nothing more here: the thread's state is being torn down


def close_orphans(**kwargs):
    """``request_finished`` receiver: close the connections of threads that ended (in the
    database pool when sent on an event loop: closing an SQLite connection may checkpoint)."""
    if not _orphans:
        return
    from openai_django import threads

    if threads.on_event_loop():
        threads.in_pool(_close_orphans)
    else:
        _close_orphans()


def _close_orphans():
    while _orphans:
        try:
            raw = _orphans.pop()
        except IndexError:
            return
        with contextlib.suppress(Exception):
            raw.close()


def remember(sender=None, connection=None, **kwargs):
    """``connection_created`` receiver: the new DB-API connection is closed with its thread."""
    if connection is None or connection.connection is None:
        return
    if threading.current_thread() is threading.main_thread():
        return  # the main thread ends with the process
    closers = getattr(_local, "closers", None)
    if closers is None:
        closers = _local.closers = {}
    # One per alias: a reconnect replaces the previous one (which Django closed before it
    # connected again; closing it twice is harmless).
    closers[connection.alias] = _Closer(connection)


request_finished.connect(close_orphans, dispatch_uid="openai_django.thread_connections.close")
