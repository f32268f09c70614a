"""The database from the event loop: a bounded pool of threads for the ORM.

Under ASGI the gateway's views are coroutines, and the record must never block the event loop:
every database step (auth, the record's start, checkpoint and finish) runs in this pool, whose
size (``DB_THREADS``) bounds the connections a process opens, however many streams it holds.
Each thread keeps its own connection (the pool is the bound, whatever ``CONN_MAX_AGE`` says
for request threads), except one from Django's connection pool (``OPTIONS["pool"]``), which is
given back to it at the end of every hop (:func:`release_pooled`). A thread's hop looks after
its connection as Django's request boundaries look after a request thread's: a connection that
had an error is checked and replaced if unusable, one older than a positive ``CONN_MAX_AGE`` is
closed (the next query opens a new one), and with ``CONN_HEALTH_CHECKS`` one left idle for
``IDLE_RECHECK`` seconds is checked before its next query (a database restarted meanwhile costs
no call).
"""

import asyncio
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import connections

from openai_django.conf import app_settings

_executor = None
_lock = threading.Lock()
_local = threading.local()  # the pool thread's last hop's end (monotonic), for IDLE_RECHECK

#: Seconds a pool thread's connection may sit unused before its next query checks it
#: (``CONN_HEALTH_CHECKS``): a thread busy with hop after hop does not check before each.
IDLE_RECHECK = 1.0


def executor():
    global _executor
    if _executor is None:
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=app_settings.DB_THREADS,
                                               thread_name_prefix="openai-django-db")
    return _executor


def _fresh(func):
    @functools.wraps(func)
    def run(*args, **kwargs):
        now = time.monotonic()
        idle = now - getattr(_local, "used", now) >= IDLE_RECHECK
        for conn in connections.all(initialized_only=True):
            if conn.errors_occurred:  # a broken connection is replaced, a healthy one kept
                conn.close_if_unusable_or_obsolete()
            elif conn.connection is not None:
                if (conn.settings_dict.get("CONN_MAX_AGE") and conn.close_at is not None
                        and now >= conn.close_at):
                    conn.close()
                elif idle:
                    conn.health_check_done = False  # checked first if CONN_HEALTH_CHECKS
        try:
            return func(*args, **kwargs)
        finally:
            _local.used = time.monotonic()
            release_pooled()
    return run


def release_pooled():
    """Give the calling thread's connections that came from Django's connection pool
    (``OPTIONS["pool"]``, psycopg 3) back to it, as the end of a request does for a request
    thread (``CONN_MAX_AGE`` is 0 with a pool): a pool thread, the stream checkpointer or the
    circuit breaker's writer holds a pooled connection only for its step, never between
    steps, so ``max_size`` bounds what a process holds at once, not one a thread. A
    connection inside ``atomic`` is left alone; one of a plain (unpooled) alias is kept, as
    the module's docstring says."""
    for conn in connections.all(initialized_only=True):
        if (conn.connection is not None and not conn.in_atomic_block
                and conn.settings_dict.get("OPTIONS", {}).get("pool")):
            conn.close()


def on_event_loop():
    """Whether the calling thread is running an event loop (where the ORM must not run)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def in_pool(func, *args):
    """Run ``func(*args)`` in the database pool without waiting for it (from the event loop:
    a ``request_finished`` receiver's database work)."""
    executor().submit(_fresh(func), *args)


def db(func):
    """``await db(func)(*args, **kwargs)``: ``func`` run in the database pool, in a copy of
    the caller's context (``contextvars``), its result or its exception handed back to the
    loop.

    What asgiref's ``sync_to_async(thread_sensitive=False, executor=...)`` does for a call,
    minus what this pool does not need: its thread-sensitivity bookkeeping and the
    ``concurrent.futures`` future chained to an asyncio one (``run_in_executor``). The
    context variables ``func`` set come back to the caller, as there. CPU of a hop of a
    no-op, both threads, median of 8 rounds of 3,000 (``python -m bench.hop_bench``,
    2026-12-02): at load 3.9 (00:52 UTC) asgiref 61 us, this 46 us under asyncio, 44 and
    29 us under uvloop; on the quiet machine (load 0.7, 01:26 UTC, where each hop wakes a
    sleeping core) 161 and 131 us under asyncio, 115 and 99 us under uvloop. A streamed chat
    call through the lean ASGI entry went from 4.88 M to 4.24 M instructions with this and
    the close on the loop (asgi.py), ``python -m bench.instructions --entry asgi --stream``.
    A call makes two hops (the record's start and its finish).

    A function handed to the pool runs to its end even when its caller is cancelled
    meanwhile (the record's writes are never cut off half-way); the caller only stops
    waiting for it.
    """
    fresh = _fresh(func)

    async def call(*args, **kwargs):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        context = contextvars.copy_context()

        def run():
            try:
                result = context.run(fresh, *args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
                if isinstance(exc, StopIteration):  # a future cannot hold one
                    exc = RuntimeError(f"{func!r} raised StopIteration")
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        executor().submit(run)
        result = await future
        _restore(context)
        return result

    return call


def _restore(context):
    """The context variables ``func`` set, set in the caller's context too (as asgiref does:
    a value a site's receiver put in an ``asgiref.local.Local`` is seen after the hop)."""
    for var, value in context.items():
        try:
            if var.get() is value:
                continue
        except LookupError:
            pass
        var.set(value)


def _settle(future, result, exc):
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def shutdown():
    """End the pool's threads (their connections close with them): for a test run's end or a
    server's shutdown; the next ``db()`` starts a new pool."""
    global _executor
    with _lock:
        pool, _executor = _executor, None
    if pool is None:
        return
    # Each thread closes its own connections (Django's are per thread, and a thread's end
    # does not close them): one job a thread, held at a barrier until every thread has one.
    started = len(pool._threads)
    if started:
        barrier = threading.Barrier(started)

        def close_mine():
            connections.close_all()
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass

        for _ in range(started):
            pool.submit(close_mine)
    pool.shutdown(wait=True)
