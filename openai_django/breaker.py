"""A circuit breaker per upstream, its state shared by every process of the site.

``CIRCUIT_BREAKER = {"threshold": 5, "cooldown": 30.0, "backend": None, "refresh": 1.0}``:
after ``threshold`` failures in a row (a connection error, a timeout, 429 or 5xx; counted by
all processes together) an upstream is *open*: calls skip it for ``cooldown`` seconds and go
to the next upstream of their route. Then it is *half-open*: the next call tries it; an answer
closes it (the count back to 0), another failure opens it again at once. When every upstream
of a route is open they are tried anyway, in order: the cool-down is a preference, never a
reason to answer an error without asking anyone.

The state lives in Redis (a hash per upstream) when a Redis URL is known, as for
``CONCURRENCY`` (``backend`` "redis"), else in the database (:class:`UpstreamHealth`, "db").
A healthy call costs no store access: each process keeps the state it last read for at most
``refresh`` seconds, and writes only failures, and the first success after them. Those writes
are made by a thread of the breaker's own, never in the call's time (a fallback would
otherwise wait on a database write); the process's own view changes at once.
"""

import logging
import queue
import threading
import time
from datetime import datetime, timezone

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from openai_django.conf import app_settings

UTC = timezone.utc  # datetime.UTC is Python 3.11+

logger = logging.getLogger("openai_django.breaker")

KEY = "openai_django:upstream:{}"


def _options():
    options = {"threshold": 5, "cooldown": 30.0, "backend": None, "refresh": 1.0}
    options.update(app_settings.CIRCUIT_BREAKER or {})
    return options


class DatabaseStore:
    name = "db"

    def read(self, names):
        from openai_django.models import UpstreamHealth

        rows = {row.name: row for row in UpstreamHealth.objects.filter(name__in=names)}
        out = {}
        for name in names:
            row = rows.get(name)
            out[name] = _state(row.failures, row.opened_until.timestamp()
                               if row.opened_until else 0.0, row.last_error,
                               row.last_failure_at, row.times_opened) if row else _state()
        return out

    def failure(self, name, error, threshold, cooldown):
        from django.db import IntegrityError, transaction
        from django.db.models import F

        from openai_django.models import UpstreamHealth

        now = datetime.now(UTC)
        for _ in range(2):
            try:
                with transaction.atomic():
                    updated = UpstreamHealth.objects.filter(name=name).update(
                        failures=F("failures") + 1, last_error=error[:300],
                        last_failure_at=now)
                    if not updated:
                        UpstreamHealth.objects.create(name=name, failures=1,
                                                      last_error=error[:300],
                                                      last_failure_at=now)
                    row = UpstreamHealth.objects.get(name=name)
                    if row.failures >= threshold:
                        row.opened_until = datetime.fromtimestamp(time.time() + cooldown, UTC)
                        row.times_opened += 1
                        row.save(update_fields=["opened_until", "times_opened"])
                    return row.failures, (row.opened_until.timestamp()
                                          if row.opened_until else 0.0)
            except IntegrityError:  # another process created the row first
                continue
        return threshold, time.time() + cooldown

    def success(self, name):
        from openai_django.models import UpstreamHealth

        UpstreamHealth.objects.filter(name=name).update(
            failures=0, opened_until=None, last_success_at=datetime.now(UTC))


class RedisStore:
    name = "redis"

    def __init__(self, url):
        from openai_django.concurrency import RedisBackend

        self.client = RedisBackend(url).client

    def read(self, names):
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(KEY.format(name))
        out = {}
        for name, row in zip(names, pipe.execute(), strict=True):
            row = {k.decode(): v.decode() for k, v in row.items()}
            last = row.get("last_failure_at")
            out[name] = _state(int(row.get("failures", 0)), float(row.get("opened_until", 0)),
                               row.get("last_error", ""),
                               datetime.fromtimestamp(float(last), UTC) if last else None,
                               int(row.get("times_opened", 0)))
        return out

    def failure(self, name, error, threshold, cooldown):
        key = KEY.format(name)
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(key, "failures", 1)
        pipe.hset(key, mapping={"last_error": error[:300], "last_failure_at": now})
        failures = pipe.execute()[0]
        opened_until = 0.0
        if failures >= threshold:
            opened_until = now + cooldown
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, "opened_until", opened_until)
            pipe.hincrby(key, "times_opened", 1)
            pipe.execute()
        return failures, opened_until

    def success(self, name):
        key = KEY.format(name)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"failures": 0, "last_success_at": time.time()})
        pipe.hdel(key, "opened_until")
        pipe.execute()


def _state(failures=0, opened_until=0.0, last_error="", last_failure_at=None, times_opened=0):
    return {"failures": failures, "opened_until": opened_until, "last_error": last_error,
            "last_failure_at": last_failure_at, "times_opened": times_opened}


class Breaker:
    def __init__(self):
        self._store = None
        self._seen = {}  # name -> (monotonic time read, state)
        self._lock = threading.Lock()
        self._writes = queue.Queue()
        self._writer = None

    @property
    def store(self):
        if self._store is None:
            backend = _options()["backend"]
            from openai_django.concurrency import redis_url

            if backend is None:
                backend = "redis" if redis_url() else "db"
            if backend == "redis":
                url = redis_url()
                if not url:
                    raise ImproperlyConfigured(
                        "CIRCUIT_BREAKER['backend'] is 'redis' but no Redis URL is known "
                        "(CONCURRENCY_REDIS_URL or a redis:// CELERY_BROKER_URL).")
                self._store = RedisStore(url)
            elif backend == "db":
                self._store = DatabaseStore()
            else:
                raise ImproperlyConfigured("CIRCUIT_BREAKER['backend'] is 'redis', 'db' or "
                                           "None.")
        return self._store

    def reset(self):
        with self._lock:
            self._store = None
            self._seen.clear()

    def stale(self, names):
        """Those of ``names`` whose shared state was not read within ``refresh`` seconds."""
        now = time.monotonic()
        every = _options()["refresh"]
        return [n for n in names if now - self._seen.get(n, (-1e9,))[0] >= every]

    def refresh(self, names, force=False):
        """Reread the shared state of ``names`` not read within ``refresh`` seconds."""
        stale = list(names) if force else self.stale(names)
        if not stale:
            return
        now = time.monotonic()
        try:
            states = self.store.read(stale)
        except Exception:
            logger.exception("Could not read the circuit breaker's state")
            return
        with self._lock:
            behind = self._writes.unfinished_tasks > 0  # this process's writes still queued
            for name, state in states.items():
                if behind and name in self._seen:
                    mine = self._seen[name][1]
                    state = dict(state, failures=max(state["failures"], mine["failures"]),
                                 opened_until=max(state["opened_until"],
                                                  mine["opened_until"]))
                self._seen[name] = (now, state)

    def _local(self, name):
        seen = self._seen.get(name)
        return seen[1] if seen is not None else _state()

    def allows(self, name, refresh=True):
        """Whether a call may go to ``name`` now (closed, or half-open after its cool-down);
        ``refresh=False``: as last read (the async path reads in the database pool)."""
        if refresh:
            self.refresh([name])
        return self._local(name)["opened_until"] <= time.time()

    def failing(self, name):
        """Whether this process last saw ``name`` failing (so a success is worth writing)."""
        state = self._local(name)
        return state["failures"] > 0 or state["opened_until"] > 0

    def failure(self, name, entry):
        """Count a failure of ``name``: this process's view at once (it opens the circuit
        itself at the threshold), the shared store by the writer thread."""
        options = _options()
        threshold, cooldown = int(options["threshold"]), float(options["cooldown"])
        error = str(entry.get("error") or f"HTTP {entry.get('status')}")[:300]
        with self._lock:
            state = dict(self._local(name))
            state["failures"] += 1
            state["last_error"] = error
            if state["failures"] >= threshold and state["opened_until"] <= time.time():
                state["opened_until"] = time.time() + cooldown
            self._seen[name] = (self._seen.get(name, (time.monotonic(),))[0], state)
        self._write(self._store_failure, name, error, threshold, cooldown)

    def success(self, name):
        """An answer from ``name``: its circuit closes (here at once, in the store soon)."""
        with self._lock:
            self._seen[name] = (time.monotonic(), _state())
        self._write(self._store_success, name)

    def _store_failure(self, name, error, threshold, cooldown):
        failures, opened_until = self.store.failure(name, error, threshold, cooldown)
        if opened_until and failures == threshold:
            logger.warning("Upstream %s failed %s times in a row: skipped for %ss", name,
                           failures, cooldown)
        with self._lock:
            state = dict(self._local(name), failures=failures)
            state["opened_until"] = max(opened_until, state["opened_until"])
            self._seen[name] = (time.monotonic(), state)

    def _store_success(self, name):
        self.store.success(name)

    # -- the writer thread ----------------------------------------------------------------

    def _write(self, function, *args):
        self._writes.put((function, args))
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._drain, daemon=True,
                                                name="openai-django-breaker")
                self._writer.start()

    def _drain(self):
        from django.db import connections

        from openai_django.threads import release_pooled

        while True:
            try:
                function, args = self._writes.get(timeout=5.0)
            except queue.Empty:
                with self._lock:
                    if self._writes.empty():
                        self._writer = None
                        break
                continue
            try:
                function(*args)
            except Exception:
                logger.exception("Could not record the health of upstream %s", args[0])
            finally:
                release_pooled()  # a connection of Django's pool is not held while idle
                self._writes.task_done()
        connections.close_all()  # the thread's own connection, not the callers'

    def flush(self):
        """Wait until every write so far reached the store (tests, the admin)."""
        self._writes.join()

    def state(self, name):
        """``{"state": "closed"|"open"|"half-open", "failures", "opened_until", ...}`` read
        from the store now (the admin)."""
        self.flush()
        self.refresh([name], force=True)
        state = dict(self._local(name))
        now = time.time()
        opened = state["opened_until"]
        if opened > now:
            state["state"] = "open"
        elif opened or state["failures"] >= int(_options()["threshold"]):
            state["state"] = "half-open"
        else:
            state["state"] = "closed"
        state["opened_until"] = datetime.fromtimestamp(opened, UTC) if opened else None
        return state


#: The process's breaker.
breaker = Breaker()


def _settings_changed(*, setting, **kwargs):
    if setting == "OPENAI_DJANGO":
        breaker.reset()


setting_changed.connect(_settings_changed, dispatch_uid="openai_django.breaker.reset")
