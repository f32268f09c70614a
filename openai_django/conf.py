"""The ``OPENAI_DJANGO`` settings namespace.

Every setting the app reads goes through :data:`app_settings`, which looks the value up in
``settings.OPENAI_DJANGO`` on each access (cached until ``setting_changed`` fires), so
``override_settings`` works in tests and nothing is read at import time.
"""

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

MB = 1024 * 1024

DEFAULTS = {
    # The upstream OpenAI-compatible API. The key is sent upstream only; it is never recorded.
    "BASE_URL": "https://api.openai.com/v1",
    "API_KEY": None,
    # Sent upstream when the client sends no OpenAI-Organization header of its own.
    "ORGANIZATION": None,
    # Organization administration (``/organization/...``, project roles: the operations the
    # 2.3.0 spec marks ``AdminApiKeyAuth``) is not served unless this is True, and then only
    # to superusers' keys, sent upstream with ``ADMIN_API_KEY`` (an admin key, never recorded).
    "ADMIN_OPERATIONS": False,
    "ADMIN_API_KEY": None,
    # A path under /v1/ that neither bundled spec describes: "record" forwards it (the key
    # checked, the call recorded, streams included), so next year's endpoints work the day
    # they ship; "off" answers 404.
    "PASSTHROUGH": "record",
    # Seconds. ``READ_TIMEOUT`` bounds the wait for the first byte and between stream events.
    "CONNECT_TIMEOUT": 10.0,
    "READ_TIMEOUT": 600.0,
    # Size of the pooled keep-alive connection pool to the upstream (per process).
    "POOL_SIZE": 64,
    # The gateway's transport: "auto" serves async views under ASGI (the URLconf is loaded on
    # the event loop) and sync ones under WSGI; "sync" or "async" forces one.
    "TRANSPORT": "auto",
    # Threads of the database pool the async transport runs the record in (per process).
    "DB_THREADS": 8,
    # Request headers forwarded upstream as sent by the client (lower-case names).
    "FORWARD_HEADERS": ["openai-organization", "openai-beta", "openai-project", "user-agent"],
    # Upstream response headers kept in the record and passed back to the client.
    "RECORD_RESPONSE_HEADERS": [
        "x-request-id",
        "openai-processing-ms",
        "openai-model",
        "openai-organization",
        "openai-version",
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ],
    # Validation of request bodies against the bundled spec: "strict" (the spec, widened by
    # the values today's SDKs send, see spec.py) or "off".
    "VALIDATION": "strict",
    # Size limits, in bytes (OpenAI's own limits as defaults).
    "MAX_JSON_BYTES": 32 * MB,
    "MAX_IMAGE_BYTES": 4 * MB,
    "MAX_AUDIO_BYTES": 25 * MB,
    "MAX_FILE_BYTES": 512 * MB,
    # Where artifacts go: an alias of ``settings.STORAGES``.
    "STORAGE": "default",
    "ARTIFACT_PREFIX": "openai_django",
    # How artifacts are served: "stream" (through the app, any storage) or "signed" (a redirect
    # to a short-lived signed URL where the storage can sign, e.g. S3; else streamed).
    "ARTIFACT_URLS": "stream",
    "ARTIFACT_URL_EXPIRES": 300,
    # Generated images answered as URLs are fetched at once, before they expire.
    "FETCH_IMAGE_URLS": True,
    "IMAGE_URL_HOSTS": ["*.blob.core.windows.net", "*.openai.com", "*.oaiusercontent.com"],
    "IMAGE_URL_SCHEMES": ["https"],
    # Only for tests and closed networks: allow fetching from private/loopback addresses.
    "IMAGE_URL_ALLOW_PRIVATE": False,
    # ``True``, ``False`` or a CA bundle path, as for ``requests``' ``verify``.
    "IMAGE_URL_VERIFY": True,
    "IMAGE_URL_TIMEOUT": 30.0,
    "IMAGE_URL_MAX_BYTES": 20 * MB,
    # Whether calls are recorded at all. ``False`` skips every write of a call (no row, no
    # artifacts; ``X-Call-Id`` still carries a fresh id that matches no row): the benchmark's
    # "recording off" baseline, and a kill switch for a site that only wants the proxy.
    "RECORD": True,
    # Group commit: concurrent calls' rows are written in shared transactions by whichever
    # request thread gets there first, each request still waiting for its own row to be
    # committed (openai_django/writer.py). Worth it under concurrency, above all on SQLite.
    "WRITER": False,
    # What to record. Operations listed in METADATA_ONLY_OPERATIONS keep no bodies/artifacts.
    "RECORD_BODIES": True,
    "RECORD_STREAM_EVENTS": True,
    "METADATA_ONLY_OPERATIONS": [],
    # A dotted path to ``redact(data, *, call, field) -> data``, applied before anything is
    # stored; "openai_django.redaction.redact_pii" is the built-in one.
    "REDACT": None,
    # Retention, in days; ``None`` keeps forever. Metadata may outlive bodies and artifacts.
    "RETENTION": {"bodies": None, "artifacts": None, "metadata": None},
    # Background calls (Celery).
    "TASK_QUEUE": None,
    "MAX_ATTEMPTS": 5,
    "RETRY_BACKOFF": 1.0,
    "RETRY_BACKOFF_MAX": 60.0,
    "RETRY_JITTER": True,
    "STALE_RUNNING_AFTER": 900,
    # Seconds between sweeps of orphaned calls run by each web process itself (after a
    # request, never during one; the first one right after the process's first request):
    # calls left running by a dead process of this host are finished as lost within this
    # bound, with or without celery beat. None: only beat or ``manage.py openai_sweep``.
    "SWEEP_INTERVAL": 60,
    # Seconds between saves of a stream's events while it is relayed: a crash loses at most
    # this much of what the client was sent. None: events are saved only at the end.
    "STREAM_CHECKPOINT_SECONDS": 2.0,
    # Cap on concurrent upstream calls made by tasks: {"*": N, "model-name": M}; empty = none.
    "CONCURRENCY": {},
    # Where the caps' leases live: "redis", "db" (a lease table), or None: Redis when a Redis
    # URL is known (CONCURRENCY_REDIS_URL, else a redis:// CELERY_BROKER_URL), else the db.
    "CONCURRENCY_BACKEND": None,
    "CONCURRENCY_REDIS_URL": None,
    # Seconds a task waits for a free slot before it steps aside (re-queued, not an attempt).
    "CONCURRENCY_WAIT": 1.0,
    # Seconds a lease outlives a holder that died without releasing it (None: the timeouts).
    "CONCURRENCY_LEASE_SECONDS": None,
    # Re-queue queued calls whose message was lost (the filesystem broker loses a dead worker's
    # reserved messages) after this many seconds past due; None = never.
    "STALE_QUEUED_AFTER": None,
    # The site's prices, over genai-prices' (pricing.py): per model name or "prefix*", USD per
    # 1,000 tokens ("input", "output", "cached_input") or "image" / "minute" / "characters".
    "PRICES": None,
    # Budgets and rate limits (controls.py; set in the admin, manage.py openai_limits or
    # openai_django.set_budget/set_rate_limit). False: none is checked (a kill switch).
    "LIMITS": True,
    # Where rate-limit counters live: "redis", "db" (a counter table), or None: Redis when
    # RATE_LIMIT_REDIS_URL is set, else the database. Budgets are always in the database.
    "RATE_LIMIT_BACKEND": None,
    "RATE_LIMIT_REDIS_URL": None,
    # Output tokens assumed for a call that sets no max_tokens/max_completion_tokens/
    # max_output_tokens, in the estimate counted before the call (tokens per minute, budgets).
    "ESTIMATED_OUTPUT_TOKENS": 256,
    # Seconds a process keeps the list of which keys, users and groups have an allowance at
    # all, so calls of the others cost no query; a subject given its first allowance by
    # another process is checked within this delay (0: look up every call).
    "LIMITS_CACHE_SECONDS": 1.0,
    # Prometheus metrics at /metrics (metrics.py): None = off (nothing counted, 404); a dict
    # {"TOKEN": "<bearer token>" or a list, "STAFF": True, "PUBLIC": False} says who may read.
    "METRICS": None,
    # How many recent calls the REST log returns at most per page.
    "LOG_PAGE_MAX": 100,
}

# Settings that name a dotted path to import.
IMPORT_STRINGS = {"REDACT"}


class AppSettings:
    """Lazy view over ``settings.OPENAI_DJANGO`` with :data:`DEFAULTS` beneath it."""

    def __init__(self, defaults):
        self._defaults = defaults
        self._cache = {}

    @property
    def user_settings(self):
        from django.conf import settings

        value = getattr(settings, "OPENAI_DJANGO", None) or {}
        if not isinstance(value, dict):
            raise ImproperlyConfigured("settings.OPENAI_DJANGO must be a dict.")
        return value

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._defaults:
            raise AttributeError(f"Unknown openai_django setting: {name!r}")
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = self.user_settings.get(name, self._defaults[name])
        if name in IMPORT_STRINGS and isinstance(value, str):
            from django.utils.module_loading import import_string

            try:
                value = import_string(value)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"settings.OPENAI_DJANGO[{name!r}] = {value!r} could not be imported: {exc}"
                ) from exc
        self._cache[name] = value
        return value

    def unknown_keys(self):
        return sorted(set(self.user_settings) - set(self._defaults))

    def reload(self):
        self._cache.clear()


app_settings = AppSettings(DEFAULTS)


def _reload(*, setting, **kwargs):
    # Each module resets its own state on ``setting_changed`` (the upstream client does in
    # upstream.py): settings import nothing of the package.
    if setting == "OPENAI_DJANGO":
        app_settings.reload()


setting_changed.connect(_reload, dispatch_uid="openai_django.conf.reload")
