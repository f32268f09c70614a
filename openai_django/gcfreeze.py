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
flight). A full collection then walks only what came after: measured, well under a millisecond.

``OPENAI_DJANGO["GC_FREEZE"] = False`` leaves the collector alone (e.g. for a site that tunes
it itself).
"""

from __future__ import annotations

import gc
import os
import threading

from django.core.signals import request_finished

from openai_django.conf import app_settings

FREEZE_AFTER = (1, 10, 100, 1000)

_lock = threading.Lock()
_state = {"pid": None, "requests": 0}


def after_request(**kwargs):
    """``request_finished`` receiver: counts this process's requests and freezes the
    collector's generations after the ones in :data:`FREEZE_AFTER`."""
    if _state["requests"] > FREEZE_AFTER[-1] and _state["pid"] == os.getpid():
        return  # the common case, without the lock
    if not app_settings.GC_FREEZE:
        return
    with _lock:
        if _state["pid"] != os.getpid():  # a forked child counts its own requests
            _state["pid"], _state["requests"] = os.getpid(), 0
        _state["requests"] += 1
        if _state["requests"] in FREEZE_AFTER:
            gc.freeze()


request_finished.connect(after_request, dispatch_uid="openai_django.gcfreeze.after_request")
