"""Python's full garbage collections kept short: what a web process loaded to serve is frozen.

Why: a gateway worker holds ~100-150k long-lived objects once it has served its first calls
(Django, the URLconf, both OpenAPI specs and their validators, the HTTP client), and CPython's
oldest-generation collection walks all of them, holding the GIL: measured in the benchmark's
granian workers (gc.callbacks), one such collection every ~1,500 calls per worker, each
60-410 ms on this loaded 2-core machine; every request of that process waits for it.

How: after a process's first request, and again after its 10th, 100th and 1,000th (the
specs' validators and the upstream clients are built lazily, per operation), ``gc.freeze()``
moves every object then tracked into the permanent generation, which collections skip. The
objects are not copied or changed: reference counting still frees any of them that is
released; only a reference cycle made of frozen objects would never be collected (what is
alive at those moments is the site's code and caches, plus at most the few requests then in
flight). A full collection then walks only what came after.

What it must not keep for good: cyclic garbage that was alive at a freeze, above all the
database connections of request threads the server retires when idle (granian retires a
blocking thread after 30 s idle; Django's connection of that thread is a reference cycle, so
only a full collection closes it). So every ``GC_FREEZE`` seconds (600 by default) one request
thread, after its response, unfreezes, collects everything once (one pause of the old length,
every ten minutes instead of every few seconds) and freezes again.

``OPENAI_DJANGO["GC_FREEZE"] = None`` (or False) leaves the collector alone (e.g. for a site
that tunes it itself); ``True`` is 600.
"""

from __future__ import annotations

import gc
import os
import threading
import time

from django.core.signals import request_finished

from openai_django.conf import app_settings

FREEZE_AFTER = (1, 10, 100, 1000)

_lock = threading.Lock()
_state = {"pid": None, "requests": 0, "refresh_at": 0.0}


def period():
    """Seconds between full collections, or None when the collector is left alone."""
    value = app_settings.GC_FREEZE
    if value is True:
        return 600.0
    return float(value) if value else None


def after_request(**kwargs):
    """``request_finished`` receiver: counts this process's requests, freezes the collector's
    generations after the ones in :data:`FREEZE_AFTER`, and refreshes the freeze (one full
    collection) every :func:`period` seconds."""
    if (_state["requests"] > FREEZE_AFTER[-1] and _state["pid"] == os.getpid()
            and time.monotonic() < _state["refresh_at"]):
        return  # the common case, without the lock
    every = period()
    if every is None:
        return
    if not _lock.acquire(blocking=False):
        return  # another thread is at it
    try:
        now = time.monotonic()
        if _state["pid"] != os.getpid():  # a forked child counts its own requests
            _state.update(pid=os.getpid(), requests=0, refresh_at=now + every)
        _state["requests"] += 1
        if _state["requests"] in FREEZE_AFTER:
            gc.freeze()
        elif now >= _state["refresh_at"]:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        if now >= _state["refresh_at"]:
            _state["refresh_at"] = now + every
    finally:
        _lock.release()


request_finished.connect(after_request, dispatch_uid="openai_django.gcfreeze.after_request")
