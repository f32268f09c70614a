"""Sweeps of orphaned calls run by the web processes themselves, so that no call stays
``running`` for good when nothing else sweeps (no celery beat, no cron).

Each web process sweeps once right after its first request (a restarted server finishes at
once the calls its dead predecessor left), then at most every ``SWEEP_INTERVAL`` seconds, after
a request has been answered (``request_finished``: never in a request's own time). The sweep
itself is :func:`openai_django.tasks.sweep`: calls of a dead process of this host are finished
as ``lost`` at once, calls of other hosts once they are older than ``STALE_RUNNING_AFTER``.
"""

import logging
import threading
import time

from django.core.signals import request_finished
from django.db import close_old_connections

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.recovery")

_lock = threading.Lock()
_last = [0.0]  # monotonic time of this process's last sweep (0: none yet)


def maybe_sweep(**kwargs):
    """Sweep if this process has not for ``SWEEP_INTERVAL`` seconds (one thread at a time;
    the others go on at once). Sent on an event loop (the lean ASGI entry closes a response
    there), a due sweep runs in the database pool instead, and the loop goes on."""
    interval = app_settings.SWEEP_INTERVAL
    if interval is None:
        return
    now = time.monotonic()
    if _last[0] and now - _last[0] < interval:
        return
    if not _lock.acquire(blocking=False):
        return
    _last[0] = now
    from openai_django import threads

    if not threads.on_event_loop():
        _sweep()
        return
    try:
        # The lock is released there, when the sweep is done; the pool's thread keeps its
        # connection (threads.py looks after it).
        threads.in_pool(_sweep, False)
    except RuntimeError as exc:  # the pool is shut down (the process is ending)
        _lock.release()
        logger.info("No sweep of orphaned calls: %s", exc)


def _sweep(close_connections=True):
    try:
        from openai_django.tasks import sweep

        counts = sweep()
        if any(counts.values()):
            logger.warning("Orphaned calls swept by web process: %s", counts)
    except Exception:
        logger.exception("The sweep of orphaned calls failed")
    finally:
        _lock.release()
        if close_connections:
            close_old_connections()


request_finished.connect(maybe_sweep, dispatch_uid="openai_django.recovery.maybe_sweep")
