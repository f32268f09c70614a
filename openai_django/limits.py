"""Rate limits: requests and tokens per minute of an API key, a user or a group.

**Algorithm: fixed one-minute windows**, aligned on the clock's minutes (UTC). Each limited
subject has one counter pair (requests, tokens) per minute; a call is let through only if,
for every subject that limits it, ``requests + 1 <= requests_per_minute`` and ``tokens +
estimate <= tokens_per_minute``, and then it is counted in all of them, all or nothing. A
refused call is not counted. So within one minute window exactly ``N`` calls pass a limit of
``N``, however many processes and hosts serve them; as with every fixed window, a burst at
the end of one minute and the start of the next may see up to ``2N`` within 60 seconds.
``x-ratelimit-reset-*`` and ``Retry-After`` give the time until the window ends.

The token count of a call is estimated before it is sent (see
:func:`openai_django.controls.estimate_tokens`) and corrected by its real usage when it
finishes (the difference is added to the window it was counted in).

Two backends, both shared by every process and host, neither with per-process counters:

* ``redis`` (``RATE_LIMIT_REDIS_URL`` set): one hash per subject and minute, checked and
  counted by one Lua script (atomic in Redis; the minute is Redis's own clock, so hosts with
  skewed clocks agree). A single Redis server (not Redis Cluster: the script builds its keys).
* ``db``: :class:`~openai_django.models.RateWindow` rows, one conditional ``UPDATE ... WHERE
  requests + 1 <= limit AND tokens + estimate <= limit`` per subject (in one transaction when
  several subjects apply), which the database serialises per row. The minute is the web
  process's clock (keep hosts in NTP).
"""

import hashlib
import math
import threading
import time
import typing
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from openai_django.conf import app_settings

WINDOW_SECONDS = 60


@dataclass
class Limit:
    """One subject's limits: ``key`` names its counters (``k:<id>``, ``u:<id>``, ``g:<id>``)."""

    key: str
    label: str
    requests: int | None
    tokens: int | None


@dataclass
class Count:
    """A subject's counters after the check (or at the refusal)."""

    limit: Limit
    requests: int
    tokens: int


@dataclass
class Outcome:
    allowed: bool
    window: int  # minutes since the epoch
    reset: float  # seconds until the window ends
    counts: list = field(default_factory=list)  # [Count]
    refused_by: Count | None = None
    refused_on: str = ""  # "requests" or "tokens"


def duration(seconds):
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``"1s"``,
    ``"6m0s"``, ``"17.28s"``, ``"120ms"``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest = round(rest, 3)
    if rest >= 60:  # rounding
        minutes, rest = minutes + 1, 0
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def headers(outcome):
    """``x-ratelimit-*`` headers of the most constrained subject (requests and tokens apart),
    and ``Retry-After`` on a refusal."""
    out = {}
    reset = duration(outcome.reset)
    for name, attr in (("requests", "requests"), ("tokens", "tokens")):
        limited = [c for c in outcome.counts if getattr(c.limit, attr) is not None]
        if not limited:
            continue
        tightest = min(limited, key=lambda c: getattr(c.limit, attr) - getattr(c, attr))
        limit = getattr(tightest.limit, attr)
        out[f"x-ratelimit-limit-{name}"] = str(limit)
        out[f"x-ratelimit-remaining-{name}"] = str(max(0, limit - getattr(tightest, attr)))
        out[f"x-ratelimit-reset-{name}"] = reset
    if not outcome.allowed:
        out["retry-after"] = str(max(1, math.ceil(outcome.reset)))
        out["retry-after-ms"] = str(max(1, math.ceil(outcome.reset * 1000)))
    return out


def _scope():
    """Counters are scoped by the database and the upstream, so two sites (or two test runs)
    sharing one Redis never share a counter."""
    from django.conf import settings

    db = settings.DATABASES.get("default", {})
    raw = f"{db.get('ENGINE')}|{db.get('HOST')}|{db.get('PORT')}|{db.get('NAME')}|" \
          f"{app_settings.BASE_URL}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


class RedisBackend:
    """Counters in Redis hashes, checked and counted by one Lua script."""

    # KEYS: one prefix per subject. ARGV: estimate, then (requests limit, tokens limit) per
    # subject, -1 for none. Returns {allowed, ms to window end, window, refused index (0 =
    # none), refused on (1 requests, 2 tokens), then requests, tokens per subject}.
    CHECK = """
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local window = math.floor(now_ms / 60000)
    local left = (window + 1) * 60000 - now_ms
    local estimate = tonumber(ARGV[1])
    local n = #KEYS
    local counts = {}
    local refused, on = 0, 0
    for i = 1, n do
        local key = KEYS[i] .. ':' .. window
        local values = redis.call('HMGET', key, 'r', 't')
        local r = tonumber(values[1]) or 0
        local tk = tonumber(values[2]) or 0
        counts[2 * i - 1] = r
        counts[2 * i] = tk
        local rl = tonumber(ARGV[2 * i])
        local tl = tonumber(ARGV[2 * i + 1])
        if refused == 0 then
            if rl >= 0 and r + 1 > rl then
                refused, on = i, 1
            elseif tl >= 0 and tk + estimate > tl then
                refused, on = i, 2
            end
        end
    end
    if refused == 0 then
        for i = 1, n do
            local key = KEYS[i] .. ':' .. window
            counts[2 * i - 1] = redis.call('HINCRBY', key, 'r', 1)
            counts[2 * i] = redis.call('HINCRBY', key, 't', estimate)
            redis.call('EXPIRE', key, 180)
        end
    end
    local out = {refused == 0 and 1 or 0, left, window, refused, on}
    for i = 1, 2 * n do out[5 + i] = counts[i] end
    return out
    """
    # KEYS: the counters' hashes. ARGV: the token difference. Only windows still there.
    CORRECT = """
    for i = 1, #KEYS do
        if redis.call('EXISTS', KEYS[i]) == 1 then
            redis.call('HINCRBY', KEYS[i], 't', ARGV[1])
        end
    end
    return 1
    """
    # KEYS: the counters' hashes. Gives back one request and ``ARGV[1]`` tokens.
    REFUND = """
    for i = 1, #KEYS do
        if redis.call('EXISTS', KEYS[i]) == 1 then
            redis.call('HINCRBY', KEYS[i], 'r', -1)
            redis.call('HINCRBY', KEYS[i], 't', -tonumber(ARGV[1]))
        end
    end
    return 1
    """

    _clients: typing.ClassVar[dict] = {}
    _lock = threading.Lock()

    def __init__(self, url):
        with self._lock:
            entry = self._clients.get(url)
            if entry is None:
                import redis

                client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10,
                                              health_check_interval=30)
                entry = (client, client.register_script(self.CHECK),
                         client.register_script(self.CORRECT),
                         client.register_script(self.REFUND))
                self._clients[url] = entry
        self.client, self._check, self._correct, self._refund = entry
        self.prefix = f"openai_django:rl:{_scope()}:"

    def check(self, limits, estimate):
        args = [estimate]
        for limit in limits:
            args += [-1 if limit.requests is None else limit.requests,
                     -1 if limit.tokens is None else limit.tokens]
        raw = self._check(keys=[self.prefix + limit.key for limit in limits], args=args)
        allowed, left_ms, window, refused, on = (int(v) for v in raw[:5])
        counts = [Count(limit, int(raw[5 + 2 * i]), int(raw[6 + 2 * i]))
                  for i, limit in enumerate(limits)]
        outcome = Outcome(bool(allowed), window, left_ms / 1000, counts)
        if not allowed:
            outcome.refused_by = counts[refused - 1]
            outcome.refused_on = "requests" if on == 1 else "tokens"
        return outcome

    def _keys(self, limits, window):
        return [f"{self.prefix}{limit.key}:{window}" for limit in limits]

    def correct(self, limits, window, delta):
        if delta:
            self._correct(keys=self._keys(limits, window), args=[delta])

    def refund(self, limits, window, estimate):
        self._refund(keys=self._keys(limits, window), args=[estimate])


class _Refused(Exception):
    def __init__(self, count, on):
        self.count, self.on = count, on


class DatabaseBackend:
    """Counters in :class:`~openai_django.models.RateWindow` rows; see the module docstring."""

    def check(self, limits, estimate):
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS - now
        ordered = sorted(limits, key=lambda limit: limit.key)  # one lock order: no deadlock
        try:
            if len(ordered) == 1:
                counts = [self._take(ordered[0], window, estimate)]
            else:
                with transaction.atomic():
                    counts = [self._take(limit, window, estimate) for limit in ordered]
        except _Refused as refused:
            counts = [self._read(limit, window) for limit in ordered]
            for count in counts:
                if count.limit is refused.count.limit:
                    refused = _Refused(count, refused.on)
            return Outcome(False, window, reset, counts, refused.count, refused.on)
        return Outcome(True, window, reset, counts)

    @staticmethod
    def _table():
        from openai_django.models import RateWindow

        return RateWindow, connection.ops.quote_name(RateWindow._meta.db_table)

    def _take(self, limit, window, estimate):
        model, table = self._table()
        conditions, params = [], [estimate, limit.key, window]
        if limit.requests is not None:
            conditions.append("requests + 1 <= %s")
            params.append(limit.requests)
        if limit.tokens is not None:
            conditions.append("tokens + %s <= %s")
            params += [estimate, limit.tokens]
        where = "".join(f" AND {c}" for c in conditions)
        quote = connection.ops.quote_name  # "key" and "window" are reserved words
        sql = (f"UPDATE {table} SET requests = requests + 1, tokens = tokens + %s "
               f"WHERE {quote('key')} = %s AND {quote('window')} = %s{where}")
        returning = connection.vendor in ("postgresql", "sqlite")
        for attempt in range(2):
            with connection.cursor() as cursor:
                cursor.execute(sql + (" RETURNING requests, tokens" if returning else ""),
                               params)
                row = cursor.fetchone() if returning else None
                updated = cursor.rowcount if not returning else (1 if row else 0)
            if updated:
                if row is None:
                    return self._read(limit, window)
                return Count(limit, row[0], row[1])
            if attempt == 0:
                # No row yet for this minute (or a full one): make sure it exists (whoever
                # inserts it first), then the same conditional UPDATE decides.
                model.objects.bulk_create([model(key=limit.key, window=window)],
                                          ignore_conflicts=True)
        count = self._read(limit, window)
        # Which limit refused (read after the fact: the counts may have moved since).
        on = "requests" if limit.requests is not None and (
            limit.tokens is None or count.requests + 1 > limit.requests) else "tokens"
        raise _Refused(count, on)

    def _read(self, limit, window):
        model, _ = self._table()
        row = model.objects.filter(key=limit.key, window=window).values_list(
            "requests", "tokens").first() or (0, 0)
        return Count(limit, row[0], row[1])

    def _add(self, limits, window, requests, tokens):
        _, table = self._table()
        quote = connection.ops.quote_name
        sql = (f"UPDATE {table} SET requests = requests + %s, tokens = tokens + %s "
               f"WHERE {quote('key')} = %s AND {quote('window')} = %s")
        with connection.cursor() as cursor:
            # One row at a time, in the order check() locks them (no deadlock between them).
            for key in sorted(limit.key for limit in limits):
                cursor.execute(sql, [requests, tokens, key, window])

    def correct(self, limits, window, delta):
        if delta:
            self._add(limits, window, 0, delta)

    def refund(self, limits, window, estimate):
        self._add(limits, window, -1, -estimate)


def purge_old_windows():
    """Delete the database backend's counters of past windows (run by the sweep)."""
    from openai_django.models import RateWindow

    window = int(time.time() // WINDOW_SECONDS)
    return RateWindow.objects.filter(window__lt=window - 2).delete()[0]


def get_backend():
    name = app_settings.RATE_LIMIT_BACKEND
    url = app_settings.RATE_LIMIT_REDIS_URL
    if name is None:
        name = "redis" if url else "db"
    if name == "redis":
        if not url:
            raise ImproperlyConfigured("OPENAI_DJANGO['RATE_LIMIT_BACKEND'] is 'redis' but "
                                       "OPENAI_DJANGO['RATE_LIMIT_REDIS_URL'] is not set.")
        return RedisBackend(url)
    if name == "db":
        return DatabaseBackend()
    raise ImproperlyConfigured(
        f"OPENAI_DJANGO['RATE_LIMIT_BACKEND'] must be 'redis', 'db' or None, not {name!r}.")
