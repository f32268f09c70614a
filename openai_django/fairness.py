"""First come, first served: at most ``FAIR_CONCURRENCY`` request threads of a process run the
gateway's Python at once, the others wait their turn in arrival order.

Why: a WSGI server runs each request in a thread of its own (granian's blocking threads,
gunicorn's gthread), and a process holds many because a stream holds its thread for its whole
life. Under load, every one of those threads competes for the GIL, and who gets it next is
the operating system's pick, not the order of arrival: some requests are served in a few
turns, others wait through dozens. At 64 concurrent calls on two worker processes of 512
threads the p99 was 3.5-7.5x the p50; the same server with 8 threads a worker, 1.8-3.6x
(docs/performance.md). Fewer threads would cap the number of open streams; this caps only
how many threads are *in the gateway's Python* at a time.

How: a thread takes a permit when its call starts (:func:`entered`, in the sync operation
view) and gives it back while it waits on something else (:func:`outside`: the upstream's
answer, its turn in the group-commit writer), taking one again, in arrival order, to go on.
A permit is handed from the thread that releases it straight to the oldest waiter, so
nobody overtakes; a thread that waited :data:`WAIT_SECONDS` goes on without one. A
stream's events are relayed outside it (the view has returned), and the async views (ASGI)
never take one: on an event loop, tasks already run in turn.

``FAIR_CONCURRENCY = 0`` turns it off.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager

from openai_django.conf import app_settings

_held = threading.local()

# The longest a thread waits for its turn; past it, it goes on without a permit. A turn is a
# few milliseconds of Python, so only an overload (or a thread holding a permit while it
# waits on another request to this same process, e.g. a site hook calling its own server)
# waits that long, and neither is worth a stall or a deadlock.
WAIT_SECONDS = 1.0


class FifoGate:
    """A counting semaphore whose waiters are served in the order they came."""

    def __init__(self, permits):
        self.permits = permits
        self._free = permits
        self._mutex = threading.Lock()
        self._waiters = deque()

    def acquire(self, timeout=-1):
        """Take a permit; ``False`` when ``timeout`` (seconds) passed first."""
        with self._mutex:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout):  # released by the thread that hands its permit over
            return True
        with self._mutex:
            try:
                self._waiters.remove(turn)
            except ValueError:  # handed a permit just now
                return True
        return False

    def release(self):
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


_gate = None
_gate_lock = threading.Lock()


def gate():
    """This process's gate, or ``None`` when ``FAIR_CONCURRENCY`` is 0."""
    global _gate
    permits = app_settings.FAIR_CONCURRENCY
    current = _gate
    if current is not None and current.permits == permits:
        return current
    if not permits:
        return None
    with _gate_lock:
        if _gate is None or _gate.permits != permits:
            _gate = FifoGate(permits)
        return _gate


@contextmanager
def entered():
    """Hold a permit for the body (nested: the outer one counts)."""
    if getattr(_held, "gate", None) is not None:
        yield
        return
    current = gate()
    if current is None:
        yield
        return
    if not current.acquire(WAIT_SECONDS):
        yield  # its turn is overdue: served anyway, without a permit
        return
    _held.gate = current
    try:
        yield
    finally:
        if _held.gate is current:  # not when an overdue turn went on without a permit
            _held.gate = None
            current.release()


@contextmanager
def outside():
    """Give the permit back for the body (a wait on I/O or on another thread), then queue for
    one again; a no-op in a thread that holds none."""
    current = getattr(_held, "gate", None)
    if current is None:
        yield
        return
    current.release()
    _held.gate = None
    try:
        yield
    finally:
        if current.acquire(WAIT_SECONDS):
            _held.gate = current
