"""The database pool's hop (openai_django/threads.py): what a coroutine awaiting ``db(func)()``
gets back, in which thread and context ``func`` runs, and what a cancelled caller leaves."""

import asyncio
import contextvars
import threading

import pytest

from openai_django import threads

REQUEST_ID = contextvars.ContextVar("request_id", default=None)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_the_function_runs_in_a_pool_thread_with_the_callers_context():
    def where(a, b=0):
        return threading.current_thread().name, REQUEST_ID.get(), a + b

    async def main():
        REQUEST_ID.set("req-1")
        return threading.current_thread().name, await threads.db(where)(2, b=3)

    loop_thread, (pool_thread, seen, total) = _run(main())
    assert pool_thread.startswith("openai-django-db") and pool_thread != loop_thread
    assert seen == "req-1" and total == 5


def test_a_context_variable_set_in_the_pool_comes_back_to_the_caller():
    def set_it():
        REQUEST_ID.set("from the pool")
        return REQUEST_ID.get()

    async def main():
        before = REQUEST_ID.get()
        inside = await threads.db(set_it)()
        return before, inside, REQUEST_ID.get()

    assert _run(main()) == (None, "from the pool", "from the pool")
    assert REQUEST_ID.get() is None  # asyncio.run's own context: not this one


def test_the_functions_exception_is_raised_at_the_await():
    class Refused(Exception):
        pass

    def refuse():
        raise Refused("no")

    async def main():
        with pytest.raises(Refused, match="no"):
            await threads.db(refuse)()
        # StopIteration cannot travel in a future: it arrives as a RuntimeError.
        with pytest.raises(RuntimeError, match="StopIteration"):
            await threads.db(lambda: next(iter(())))()
        return True

    assert _run(main())


def test_a_cancelled_caller_does_not_cut_the_function_short():
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        finished.set()
        return "done"

    async def main():
        task = asyncio.ensure_future(threads.db(slow)())
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The loop goes on; the function finishes in its thread, and its result lands on a
        # cancelled future without an error.
        while not finished.is_set():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        return task.cancelled()

    assert _run(main()) is True
    assert finished.is_set()


def test_hops_share_the_bounded_pool():
    seen = set()
    lock = threading.Lock()

    def note():
        with lock:
            seen.add(threading.get_ident())
        threading.Event().wait(0.005)

    async def main():
        await asyncio.gather(*(threads.db(note)() for _ in range(64)))

    threads.shutdown()
    try:
        _run(main())
    finally:
        threads.shutdown()
    from openai_django.conf import app_settings

    assert 1 <= len(seen) <= app_settings.DB_THREADS


def _pool_connection():
    """In a pool thread: the thread's DB-API connection after one query, and whether its
    health check was due before that query."""
    from django.db import connection

    due = connection.connection is not None and not connection.health_check_done
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return connection.connection, due


@pytest.fixture
def one_thread(settings):
    """A pool of one thread, made anew for the test: every hop meets the same connection."""
    settings.OPENAI_DJANGO = {**getattr(settings, "OPENAI_DJANGO", {}), "DB_THREADS": 1}
    threads.shutdown()
    yield
    threads.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_pool_connection_older_than_conn_max_age_is_replaced(one_thread):
    from django.db import connections

    settings_dict = connections.settings["default"]
    old_age = settings_dict.get("CONN_MAX_AGE")

    async def main():
        first, _ = await threads.db(_pool_connection)()
        again, _ = await threads.db(_pool_connection)()
        await asyncio.sleep(0.4)
        later, _ = await threads.db(_pool_connection)()
        return first, again, later

    settings_dict["CONN_MAX_AGE"] = 0.3
    try:
        first, again, later = _run(main())
    finally:
        settings_dict["CONN_MAX_AGE"] = old_age
    assert first is again  # kept while younger than CONN_MAX_AGE
    assert later is not first  # then closed, and the next query opened a new one


@pytest.mark.django_db(transaction=True)
def test_a_pool_connection_left_idle_is_health_checked_before_its_next_query(one_thread,
                                                                            monkeypatch):
    async def main():
        await threads.db(_pool_connection)()
        _, due_when_busy = await threads.db(_pool_connection)()
        await asyncio.sleep(threads.IDLE_RECHECK + 0.05)
        _, due_after_idle = await threads.db(_pool_connection)()
        return due_when_busy, due_after_idle

    monkeypatch.setattr(threads, "IDLE_RECHECK", 0.2)
    assert _run(main()) == (False, True)


def _backend_pid():
    """In a pool thread: the PostgreSQL backend's pid that served a query of this hop."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _held():
    """In a pool thread, at the start of a hop: the connection the thread still holds."""
    from django.db import connection

    return connection.connection


@pytest.fixture
def django_pool(one_thread):
    """README's deployment option B on the test database: ``OPTIONS["pool"]`` with one
    connection at most, ``CONN_MAX_AGE = 0``; yields the alias's psycopg pool."""
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("Django's connection pool is PostgreSQL's (psycopg 3)")
    pytest.importorskip("psycopg_pool")
    settings_dict = connections.settings["default"]
    saved_options, saved_age = settings_dict.get("OPTIONS", {}), settings_dict["CONN_MAX_AGE"]
    settings_dict["OPTIONS"] = {**saved_options,
                                "pool": {"min_size": 1, "max_size": 1, "timeout": 5}}
    settings_dict["CONN_MAX_AGE"] = 0
    pool = connection.pool  # the alias's one pool (Django keeps it per alias, not per thread)
    pool.open()
    try:
        yield pool
    finally:
        threads.shutdown()
        connection.close_pool()
        settings_dict["OPTIONS"], settings_dict["CONN_MAX_AGE"] = saved_options, saved_age


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_of_djangos_pool_goes_back_to_it_after_each_hop(django_pool):
    """Under ASGI a pool thread holds a pooled connection for its hop only, and the next hop
    gets one from Django's pool again (the same server backend: nothing reconnects)."""

    async def main():
        first = await threads.db(_backend_pid)()
        held = await threads.db(_held)()
        second = await threads.db(_backend_pid)()
        return first, held, second

    first, held, second = _run(main())
    stats = django_pool.get_stats()
    assert held is None  # given back at the end of the hop, not kept by the thread
    assert first == second  # the next hop got the pool's connection again
    assert stats["pool_size"] == 1 and stats["pool_available"] == 1  # idle, in the pool


class _SavingRelay:
    """What the stream checkpointer saves: a query in its thread, like a checkpoint's UPDATE."""

    def __init__(self):
        self.saved = threading.Event()

    def checkpoint(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        self.saved.set()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_stream_checkpointer_does_not_hold_a_pooled_connection_between_ticks(django_pool):
    from openai_django.gateway import Checkpointer

    checkpointer, relay = Checkpointer(), _SavingRelay()
    checkpointer.watch(relay, 0.05)
    try:
        assert relay.saved.wait(5)
        # The pool's only connection: had the checkpointer kept it, this would time out.
        conn = django_pool.getconn(timeout=3)
        django_pool.putconn(conn)
    finally:
        checkpointer.forget(relay)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_breakers_writer_does_not_hold_a_pooled_connection_while_idle(django_pool,
                                                                          settings):
    import uuid

    from openai_django.breaker import Breaker
    from openai_django.models import UpstreamHealth

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CIRCUIT_BREAKER": {
        "threshold": 3, "cooldown": 0.5, "backend": "db", "refresh": 0}}
    name = f"u-{uuid.uuid4().hex[:8]}"
    breaker = Breaker()
    breaker.failure(name, {"status": 500})
    breaker.flush()  # written by the breaker's thread, which stays up for 5 s of idleness
    conn = django_pool.getconn(timeout=3)  # the pool's only connection: free again
    django_pool.putconn(conn)
    assert UpstreamHealth.objects.get(name=name).failures == 1
