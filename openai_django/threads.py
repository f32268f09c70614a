"""The database from the event loop: a bounded pool of threads for the ORM.

Under ASGI the gateway's views are coroutines, and the record must never block the event loop:
every database step (auth, the record's start, checkpoint and finish) runs in this pool, whose
size (``DB_THREADS``) bounds the connections a process opens, however many streams it holds.
Each thread keeps its own connection for its life (as with ``CONN_MAX_AGE = None``: the pool
is the bound), replaced once it had an error that made it unusable.
"""

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import connections

from openai_django.conf import app_settings

_executor = None
_lock = threading.Lock()


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
        for conn in connections.all(initialized_only=True):
            if conn.errors_occurred:  # a broken connection is replaced, a healthy one kept
                conn.close_if_unusable_or_obsolete()
        return func(*args, **kwargs)
    return run


def db(func):
    """``await db(func)(*args)``: ``func`` run in the database pool."""
    return sync_to_async(_fresh(func), thread_sensitive=False, executor=executor())


def shutdown():
    """End the pool's threads (their connections close with them): for a test run's end or a
    server's shutdown; the next ``db()`` starts a new pool."""
    global _executor
    with _lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=True)
