"""Caps on concurrent upstream calls made by background tasks, across every worker.

``OPENAI_DJANGO["CONCURRENCY"] = {"*": 8, "gpt-4o": 2}`` allows at most 8 calls in flight to
the upstream (all models together) and, of those, at most 2 for ``gpt-4o``. A task takes one
slot of each cap that applies to its call before it asks the upstream and gives them back as
soon as the upstream has answered, so a burst of 1,000 submitted jobs drains at the rate the
caps allow instead of collecting 429s.

Slots are leases that expire, so a worker killed while holding one frees it after
``CONCURRENCY_LEASE_SECONDS`` at the latest (sooner: the recovery of its call releases it).
Two backends hold them, both shared by every process and machine:

* ``redis``: one sorted set per cap (member = lease token, score = expiry), taken and given
  back by Lua scripts in one round trip; a waiter blocks on a wake-up list that every release
  pushes to, so nobody polls.
* ``db``: the :class:`~openai_django.models.ConcurrencyLease` table, one row per held slot with
  a unique (key, slot): taking a slot is an INSERT that only one process can win. Waiters poll
  with a growing interval. Meant for the embedded broker and small sites.

Only background calls are capped: a web request is never made to wait for a slot.
"""

import hashlib
import logging
import random
import threading
import time
import typing
import uuid
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.concurrency")

REDIS_PREFIX = "openai_django:cc:"


def caps_for(model):
    """``[(key, limit), ...]`` of the caps a call for ``model`` must hold, in a fixed order
    (the whole upstream first), or ``[]`` when nothing is capped."""
    caps = app_settings.CONCURRENCY or {}
    if not caps:
        return []
    # Keys are scoped by the upstream's URL: "per upstream" literally, and two sites (or two
    # test runs) sharing one Redis with different upstreams never share a cap.
    scope = hashlib.sha256(str(app_settings.BASE_URL).encode()).hexdigest()[:12]
    out = []
    for name in ("*", model):
        if name and name in caps:
            limit = caps[name]
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ImproperlyConfigured(
                    f"OPENAI_DJANGO['CONCURRENCY'][{name!r}] must be a positive integer, "
                    f"not {limit!r}."
                )
            key = f"{scope}:*" if name == "*" else f"{scope}:model:{name}"
            if all(k != key for k, _ in out):
                out.append((key, limit))
    return out


def lease_seconds():
    value = app_settings.CONCURRENCY_LEASE_SECONDS
    if value is None:
        # A call cannot legitimately hold a slot longer than its timeouts allow, plus margin.
        value = app_settings.CONNECT_TIMEOUT + app_settings.READ_TIMEOUT + 30
    return float(value)


class Lease:
    """The slots one call holds; ``release()`` gives them back (safe to call twice)."""

    def __init__(self, backend, held):
        self.backend = backend
        self.held = held  # [(key, token)]

    @property
    def tokens(self):
        """JSON-friendly ``[[key, token], ...]``, kept in the call's attempt log so that whoever
        recovers a lost attempt can release what its dead holder took."""
        return [list(pair) for pair in self.held]

    def release(self):
        held, self.held = self.held, []
        if held:
            try:
                self.backend.release(held)
            except Exception:
                logger.exception("Could not release concurrency leases %s", held)


class _NoLease(Lease):
    def __init__(self):
        super().__init__(None, [])


NO_LEASE = _NoLease()


class RedisBackend:
    """Leases in Redis sorted sets; see the module docstring."""

    # KEYS: the caps' sorted sets, then their wake lists. ARGV: token, lease seconds, limits...
    # All or nothing: either every cap had room and now holds the token, or none was touched.
    ACQUIRE = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local n = #KEYS / 2
    for i = 1, n do
        redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
        if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[2 + i]) then
            return 0
        end
    end
    local ttl = math.ceil(tonumber(ARGV[2])) + 60
    for i = 1, n do
        redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
        redis.call('EXPIRE', KEYS[i], ttl)
    end
    return 1
    """
    # KEYS: sorted sets then wake lists; ARGV: tokens (one per set). Wakes one waiter per slot.
    RELEASE = """
    local n = #KEYS / 2
    local freed = 0
    for i = 1, n do
        if redis.call('ZREM', KEYS[i], ARGV[i]) == 1 then
            freed = freed + 1
            redis.call('RPUSH', KEYS[n + i], '1')
            redis.call('LTRIM', KEYS[n + i], -64, -1)
            redis.call('EXPIRE', KEYS[n + i], 600)
        end
    end
    return freed
    """

    _clients: typing.ClassVar[dict] = {}  # one client (and pool) per URL, per process
    _lock = threading.Lock()

    def __init__(self, url):
        self.url = url
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                import redis

                client = redis.Redis.from_url(url, socket_connect_timeout=5,
                                              socket_timeout=30, health_check_interval=30)
                self._clients[url] = client
        self.client = client
        self._acquire = client.register_script(self.ACQUIRE)
        self._release = client.register_script(self.RELEASE)

    @staticmethod
    def _keys(keys):
        return [REDIS_PREFIX + k for k in keys] + [REDIS_PREFIX + k + ":wake" for k in keys]

    def try_acquire(self, caps, token, seconds):
        keys = [k for k, _ in caps]
        args = [token, seconds] + [limit for _, limit in caps]
        if self._acquire(keys=self._keys(keys), args=args):
            return [(k, token) for k in keys]
        return None

    def wait(self, caps, timeout):
        """Block until a release wakes us (or ``timeout``); no polling."""
        wake = [REDIS_PREFIX + k + ":wake" for k, _ in caps]
        self.client.blpop(wake, timeout=max(0.01, timeout))

    def release(self, held):
        keys = [k for k, _ in held]
        self._release(keys=self._keys(keys), args=[t for _, t in held])

    def in_use(self, key):
        now = self.client.time()
        self.client.zremrangebyscore(REDIS_PREFIX + key, "-inf", now[0] + now[1] / 1e6)
        return self.client.zcard(REDIS_PREFIX + key)


class DatabaseBackend:
    """Leases as rows of :class:`~openai_django.models.ConcurrencyLease`."""

    def try_acquire(self, caps, token, seconds):
        held = []
        for index, (key, limit) in enumerate(caps):
            row_token = f"{token}-{index}"  # tokens are unique rows: one per cap held
            if not self._take(key, limit, row_token, seconds):
                self.release(held)
                return None
            held.append((key, row_token))
        return held

    def _take(self, key, limit, token, seconds):
        from openai_django.models import ConcurrencyLease

        now = timezone.now()
        rows = list(ConcurrencyLease.objects.filter(key=key).values_list("slot", "expires_at"))
        expired = [slot for slot, expires in rows if expires <= now]
        if expired:
            ConcurrencyLease.objects.filter(key=key, slot__in=expired,
                                            expires_at__lte=now).delete()
        taken = {slot for slot, expires in rows if expires > now}
        free = [slot for slot in range(limit) if slot not in taken]
        random.shuffle(free)  # spread concurrent takers over the free slots
        for slot in free:
            try:
                with transaction.atomic():
                    ConcurrencyLease.objects.create(
                        key=key, slot=slot, token=token, acquired_at=now,
                        expires_at=now + timedelta(seconds=seconds))
                return True
            except IntegrityError:
                continue  # another process took this slot first
        return False

    def wait(self, caps, timeout):
        time.sleep(timeout)

    def release(self, held):
        from openai_django.models import ConcurrencyLease

        if held:
            ConcurrencyLease.objects.filter(token__in=[t for _, t in held]).delete()

    def in_use(self, key):
        from openai_django.models import ConcurrencyLease

        return ConcurrencyLease.objects.filter(key=key, expires_at__gt=timezone.now()).count()


def redis_url():
    url = app_settings.CONCURRENCY_REDIS_URL
    if url:
        return url
    from django.conf import settings

    broker = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    return broker if broker.startswith(("redis://", "rediss://")) else None


def get_backend():
    name = app_settings.CONCURRENCY_BACKEND
    if name is None:
        name = "redis" if redis_url() else "db"
    if name == "redis":
        url = redis_url()
        if not url:
            raise ImproperlyConfigured(
                "OPENAI_DJANGO['CONCURRENCY_BACKEND'] is 'redis' but no Redis URL is known: "
                "set OPENAI_DJANGO['CONCURRENCY_REDIS_URL'] or a redis:// CELERY_BROKER_URL."
            )
        return RedisBackend(url)
    if name == "db":
        return DatabaseBackend()
    raise ImproperlyConfigured(
        f"OPENAI_DJANGO['CONCURRENCY_BACKEND'] must be 'redis', 'db' or None, not {name!r}."
    )


def acquire(model, *, wait=None):
    """Take a slot of every cap that applies to a call for ``model``.

    Returns a :class:`Lease` (``NO_LEASE`` when nothing is capped), or ``None`` if no slot came
    free within ``wait`` seconds (``CONCURRENCY_WAIT`` by default): the caller then steps aside
    rather than holding a worker.
    """
    caps = caps_for(model)
    if not caps:
        return NO_LEASE
    backend = get_backend()
    seconds = lease_seconds()
    token = uuid.uuid4().hex
    deadline = time.monotonic() + (app_settings.CONCURRENCY_WAIT if wait is None else wait)
    pause = 0.02
    while True:
        held = backend.try_acquire(caps, token, seconds)
        if held is not None:
            return Lease(backend, held)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if isinstance(backend, RedisBackend):
            backend.wait(caps, remaining)
        else:
            backend.wait(caps, min(pause, remaining))
            pause = min(pause * 2, 0.25)


def release_tokens(tokens):
    """Give back leases by their ``[[key, token], ...]`` (those of a dead holder)."""
    if tokens:
        get_backend().release([tuple(pair) for pair in tokens])


def in_use(model=None):
    """``{key: slots held}`` for the caps of ``model`` (the whole upstream if ``None``)."""
    backend = get_backend()
    return {key: backend.in_use(key) for key, _ in caps_for(model)}
