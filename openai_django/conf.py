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
    # Proxy and TLS of the one ``BASE_URL`` upstream (each of ``UPSTREAMS`` has its own):
    # ``PROXY`` None = HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment, False = direct,
    # or "http://[user:pass@]host:port"; ``CA_BUNDLE`` a PEM file of trusted CAs;
    # ``CLIENT_CERT`` a PEM file (certificate and key) or a (certificate, key) pair.
    "PROXY": None,
    "CA_BUNDLE": None,
    "CLIENT_CERT": None,
    # Many upstreams (openai_django/upstreams.py, README "Many upstreams"): a dict of
    # name -> {"base_url", "kind": "openai"|"azure"|"compatible", "api_key" or "api_key_env",
    # "models": [names, fnmatch patterns or {"match": ..., "rename": ...}], "headers",
    # timeouts, "proxy", "ca_bundle", "client_cert", Azure's "api_version"...}. None: the
    # one upstream of BASE_URL/API_KEY above.
    "UPSTREAMS": None,
    # The upstream of calls whose model no upstream lists, and of calls without a model
    # (files, batches...) about no object an upstream holds. None: the first one listed.
    "DEFAULT_UPSTREAM": None,
    # Ordered fallbacks per model (names or fnmatch patterns): {"gpt-4o": ["azure", "openai"]}.
    # On a connection error, a timeout, 429 or 5xx the call goes on to the next upstream.
    "FALLBACKS": {},
    # Per upstream: open after ``threshold`` failures in a row, skipped for ``cooldown``
    # seconds; ``backend`` "redis", "db" or None (Redis when a Redis URL is known, as for
    # CONCURRENCY); each process rereads the shared state at most every ``refresh`` seconds.
    "CIRCUIT_BREAKER": {"threshold": 5, "cooldown": 30.0, "backend": None, "refresh": 1.0},
    # Seconds. ``READ_TIMEOUT`` bounds the wait for the first byte and between stream events.
    "CONNECT_TIMEOUT": 10.0,
    "READ_TIMEOUT": 600.0,
    # Size of the pooled keep-alive connection pool to the upstream (per process).
    "POOL_SIZE": 64,
    # HTTP/2 to the ``BASE_URL`` upstream from the async (ASGI) client: h2 offered in ALPN for
    # https (HTTP/1.1 if the server does not pick it), prior-knowledge h2c for http. Many
    # streams share a connection (README "HTTP/2 to the upstream"); each of ``UPSTREAMS``
    # has its own ``"http2"``. The sync (WSGI) client stays on HTTP/1.1.
    "HTTP2": False,
    # The gateway's transport: "auto" serves async views under ASGI (the URLconf is loaded on
    # the event loop) and sync ones under WSGI; "sync" or "async" forces one.
    "TRANSPORT": "auto",
    # Threads of the database pool the async transport runs the record in (per process).
    "DB_THREADS": 8,
    # The lean ASGI entry (openai_django.asgi.get_asgi_application, README "Deployment"):
    # /v1/ operations served on the event loop without Django's per-request thread and the
    # thread hops of sync middleware. False: every request goes through Django's handler.
    "ASGI_LEAN": True,
    # The lean WSGI entry (openai_django.wsgi.get_wsgi_application): /v1/ operations served
    # without the cookie-session middleware and Django's second URL resolution, through the
    # same middleware lists below. False: every request goes through Django's handler.
    "WSGI_LEAN": True,
    # Site middleware a /v1/ call skips on the lean path (the cookie-session machinery: the
    # gateway authenticates keys, its views are CSRF exempt).
    "ASGI_LEAN_SKIP_MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    # Header-only MiddlewareMixin middleware (no database, no I/O) run on the event loop on
    # the lean path. Natively async middleware (e.g. corsheaders') run as under Django; any
    # other middleware in MIDDLEWARE turns the lean path off (a warning says which).
    "ASGI_LEAN_INLINE_MIDDLEWARE": [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
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
    # The image fetcher's proxy: None = the environment's (NO_PROXY honoured), False = direct,
    # or a proxy URL. Through a proxy the address checks still hold: see README "Proxies".
    "IMAGE_URL_PROXY": None,
    "IMAGE_URL_MAX_BYTES": 20 * MB,
    # Whether calls are recorded at all. ``False`` skips every write of a call (no row, no
    # artifacts; ``X-Call-Id`` still carries a fresh id that matches no row): the benchmark's
    # "recording off" baseline, and a kill switch for a site that only wants the proxy.
    "RECORD": True,
    # Group commit: concurrent calls' rows are written in shared transactions by whichever
    # request thread gets there first, each request still waiting for its own row to be
    # committed (openai_django/writer.py); on SQLite one process writes at a time, queued on a
    # lock file beside the database. On by default: alone it writes at once, in the caller's
    # thread; under load it is what keeps SQLite's tail short (docs/performance.md).
    "WRITER": True,
    # How many request threads of a process run the gateway's Python at once under WSGI, the
    # others served in arrival order (openai_django/fairness.py); 0 turns it off.
    "FAIR_CONCURRENCY": 4,
    # SQLite in WAL mode: checkpoints (the copy of the log into the database, with its two
    # fsyncs) run in a thread of each process instead of in the request whose commit crossed
    # SQLite's 1000-page mark (openai_django/sqlite_wal.py): PASSIVE once "PAGES" frames wait
    # to be copied, FULL (the write lock for at most "FULL_WAIT" seconds) once the WAL holds
    # "FULL_PAGES" frames, looked at every "INTERVAL" seconds; each connection's own
    # auto-checkpoint kept as a safety net at "FALLBACK_PAGES" (default 4 x FULL_PAGES); the WAL
    # file cut back to "KEEP_BYTES" (default FULL_PAGES frames) when the log starts over.
    # None: SQLite's own auto-checkpoint, in the committing request.
    "SQLITE_CHECKPOINT": {"PAGES": 4000, "FULL_PAGES": 16000, "INTERVAL": 0.1,
                          "FULL_WAIT": 0.02},
    # gc.freeze() after a process's 1st, 10th, 100th and 1000th request, so that Python's full
    # collections skip what the process loaded to serve (openai_django/gcfreeze.py): measured,
    # 60-410 ms each otherwise, once every ~1,500 calls per worker. The number: seconds between
    # the full collections still made (unfreeze, collect, freeze: what retired threads left,
    # their database connections, is freed). None: the collector as it is.
    "GC_FREEZE": 600,
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
    # Checkpoint writes per second per process at most: with more open streams than that
    # many per interval, each stream is saved every (open streams / budget) seconds instead
    # (2,000 streams: every 20 s), so the saves never crowd out the relaying. None: no cap.
    "STREAM_CHECKPOINT_BUDGET": 100,
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
    # Who may call /v1/ besides issued keys: DRF authentication classes (dotted paths), tried
    # in order, e.g. ["openai_django.auth.APIKeyAuthentication",
    # "rest_framework.authentication.SessionAuthentication"] for the site's own logged-in
    # users (CSRF enforced). None: issued keys only, checked without DRF (the fast path).
    "AUTHENTICATION_CLASSES": None,
    # DRF throttle classes run against every /v1/ call (429 + Retry-After, recorded as
    # rejected). None: REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]; [] for none.
    "THROTTLE_CLASSES": None,
    # The site's pre-call policy: a dotted path (or a list) to ``check(request)`` called
    # with an openai_django.policy.CallRequest before anything is sent; it refuses by
    # returning a reason or raising openai_django.policy.Refused (403, recorded). See also
    # the openai_django.signals.before_call signal.
    "BEFORE_CALL": None,
    # Labels a client puts on a call (OpenAI-Django-Tags / -Metadata / -Session headers, or the
    # Python API's call_tags= / call_metadata= / call_session=; see openai_django/tagging.py):
    # the most tags one call may carry, and the largest metadata object, in bytes of JSON.
    "TAGS_MAX": 20,
    "METADATA_MAX_BYTES": 4096,
}

# Settings that name a dotted path to import.
IMPORT_STRINGS = {"REDACT"}


class AppSettings:
    """Lazy view over ``settings.OPENAI_DJANGO`` with :data:`DEFAULTS` beneath it.

    A setting read once is kept in the instance's ``__dict__``, so the next read is a plain
    attribute hit: ``__getattr__`` runs only for a name not read yet, and Python reaches it
    only after its own lookup has failed and formatted an ``AttributeError`` (about 20 reads
    a recorded chat call: 0.18 M of its 3.96 M instructions, callgrind over 200 calls).
    :meth:`reload` forgets them.
    """

    def __init__(self, defaults):
        self._defaults = defaults

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
        value = self.user_settings.get(name, self._defaults[name])
        if name in IMPORT_STRINGS and isinstance(value, str):
            from django.utils.module_loading import import_string

            try:
                value = import_string(value)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"settings.OPENAI_DJANGO[{name!r}] = {value!r} could not be imported: {exc}"
                ) from exc
        self.__dict__[name] = value
        return value

    def imported(self, name):
        """A setting that names things by dotted path, one or a list (or gives them as
        objects), as a tuple of the things; ``None`` is an empty tuple. Not cached: the
        modules that use one keep what they built from it."""
        from django.utils.module_loading import import_string

        value = getattr(self, name)
        if value is None:
            return ()
        if isinstance(value, str) or callable(value):
            value = [value]
        items = []
        for item in value:
            if isinstance(item, str):
                try:
                    item = import_string(item)
                except ImportError as exc:
                    raise ImproperlyConfigured(
                        f"settings.OPENAI_DJANGO[{name!r}]: {item!r} could not be imported: "
                        f"{exc}") from exc
            items.append(item)
        return tuple(items)

    def unknown_keys(self):
        return sorted(set(self.user_settings) - set(self._defaults))

    def reload(self):
        for name in [name for name in self.__dict__ if name in self._defaults]:
            self.__dict__.pop(name, None)


app_settings = AppSettings(DEFAULTS)


def _reload(*, setting, **kwargs):
    # Each module resets its own state on ``setting_changed`` (the upstream client does in
    # upstream.py): settings import nothing of the package.
    if setting == "OPENAI_DJANGO":
        app_settings.reload()


setting_changed.connect(_reload, dispatch_uid="openai_django.conf.reload")
