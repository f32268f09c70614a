"""Settings of the demo site. Embedded defaults: SQLite, local files, no external service.

Environment: ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``DATABASE_URL`` (default SQLite),
``CELERY_BROKER_URL`` (default a filesystem broker under var/), ``DJANGO_DEBUG``,
``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``, ``OPENAI_DJANGO_STORAGE`` (``s3`` for
django-storages' S3 backend, configured by the ``AWS_*`` variables).
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DJANGO_VAR_DIR", BASE_DIR / "var"))


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "demo-only-insecure-secret-key-change-me"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "openai_django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "project.context_processors.upstream",
            ],
        },
    },
]


def database_from_url(url):
    """``DATABASE_URL`` as a Django database dict: sqlite:///path or postgres://..."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    if parts.scheme in ("sqlite", "sqlite3"):
        name = unquote(parts.path[1:] if parts.path.startswith("//") else parts.path.lstrip("/"))
        if parts.path.startswith("//"):
            name = "/" + name.lstrip("/")
        return sqlite_database(name or ":memory:")
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        conn_max_age = int(options.pop("conn_max_age", 600))
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    raise ValueError(f"Unsupported DATABASE_URL scheme: {parts.scheme!r}")


def sqlite_database(name):
    # WAL + synchronous=NORMAL + IMMEDIATE transactions: about 10x faster writes than Django's
    # defaults, and readers never block the writer (see shared PERF notes).
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": name,
        "CONN_MAX_AGE": None,
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                            "PRAGMA busy_timeout=20000;",
        },
    }


DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": database_from_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Tests use a file, not memory, so that processes they start (a Celery worker, a server)
    # can open the same test database; one per test run so that runs never collide.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("DJANGO_TEST_SQLITE")
        or f"/tmp/openai-django-test-{os.getpid()}.sqlite3",
    }
else:
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("DJANGO_TEST_DBNAME")
        or f"test_{DATABASES['default']['NAME']}_{os.getpid()}",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", VAR_DIR / "media"))

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if os.environ.get("OPENAI_DJANGO_STORAGE") == "s3":
    STORAGES["openai_django"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ.get("AWS_STORAGE_BUCKET_NAME", "openai-django"),
            # S3_ENDPOINT_URL is what `scripts/services env` prints for the local moto_server.
            "endpoint_url": (os.environ.get("AWS_S3_ENDPOINT_URL")
                             or os.environ.get("S3_ENDPOINT_URL") or None),
            "region_name": os.environ.get("AWS_S3_REGION_NAME") or None,
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
        },
    }
    OPENAI_DJANGO_STORAGE_ALIAS = "openai_django"
else:
    OPENAI_DJANGO_STORAGE_ALIAS = "default"

# The upstream: the real API when OPENAI_API_KEY is set, else the local stand-in that
# ``scripts/demo`` starts (OPENAI_BASE_URL points at it).
OPENAI_DJANGO = {
    "BASE_URL": os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "API_KEY": os.environ.get("OPENAI_API_KEY") or None,
    "STORAGE": OPENAI_DJANGO_STORAGE_ALIAS,
    # OPENAI_DJANGO_RECORD=0 serves the same API without writing calls (benchmark baseline).
    "RECORD": env_bool("OPENAI_DJANGO_RECORD", True),
    # OPENAI_DJANGO_WRITER=0: every call writes its own transactions (no group commit).
    "WRITER": env_bool("OPENAI_DJANGO_WRITER", True),
    # OPENAI_DJANGO_FAIR_CONCURRENCY=N: request threads in the gateway's Python at once (0: off).
    "FAIR_CONCURRENCY": int(os.environ.get("OPENAI_DJANGO_FAIR_CONCURRENCY", "4")),
    # OPENAI_DJANGO_ASGI_LEAN=0: Django's ASGI handler serves /v1/ too (project/asgi.py).
    "ASGI_LEAN": env_bool("OPENAI_DJANGO_ASGI_LEAN", True),
    # Prompts are forgotten after 30 days, usage after a year: keeping them forever should be
    # a decision a site takes, not a default it inherits (check openai_django.W005).
    "RETENTION": {"bodies": 30, "artifacts": 30, "metadata": 365},
    # OPENAI_DJANGO_LIMITS=0 checks no budget or rate limit (the bench's "off" baseline).
    "LIMITS": env_bool("OPENAI_DJANGO_LIMITS", True),
    # Rate-limit counters in Redis when this names one (else the database; bench/limits).
    "RATE_LIMIT_REDIS_URL": os.environ.get("OPENAI_DJANGO_RATE_LIMIT_REDIS_URL") or None,
    "RATE_LIMIT_BACKEND": os.environ.get("OPENAI_DJANGO_RATE_LIMIT_BACKEND") or None,
    # OPENAI_DJANGO_HTTP2=1: the async client speaks HTTP/2 to the upstream (the bench's soak).
    "HTTP2": env_bool("OPENAI_DJANGO_HTTP2", False),
}
# OPENAI_DJANGO_SQLITE_CHECKPOINT=0: SQLite's own WAL auto-checkpoint, in the committing request
# (what the benchmark measured before openai_django/sqlite_wal.py).
if not env_bool("OPENAI_DJANGO_SQLITE_CHECKPOINT", True):
    OPENAI_DJANGO["SQLITE_CHECKPOINT"] = None
# OPENAI_DJANGO_GC_FREEZE=0: Python's collector left as it is (openai_django/gcfreeze.py).
if not env_bool("OPENAI_DJANGO_GC_FREEZE", True):
    OPENAI_DJANGO["GC_FREEZE"] = None
# OPENAI_DJANGO_METRICS_TOKEN=<token>: Prometheus metrics at /metrics for that bearer token (and
# staff sessions); unset: off.
if os.environ.get("OPENAI_DJANGO_METRICS_TOKEN"):
    OPENAI_DJANGO["METRICS"] = {"TOKEN": os.environ["OPENAI_DJANGO_METRICS_TOKEN"],
                                "STAFF": True}
# OPENAI_DJANGO_SITE_LOGINS=1: the site's logged-in users may call /v1/ from its own pages
# (the /playground/ page), besides issued keys. Off by default: keys only, the fast path.
if env_bool("OPENAI_DJANGO_SITE_LOGINS", False):
    OPENAI_DJANGO["AUTHENTICATION_CLASSES"] = [
        "openai_django.auth.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ]
OPENAI_DJANGO_STANDIN = env_bool("OPENAI_DJANGO_STANDIN", False)

REST_FRAMEWORK = {
    "UNAUTHENTICATED_USER": None,
}

# Celery: no result backend (the record is the result). The demo's broker is a folder.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    # kombu's filesystem transport lists these folders and fails (FileNotFoundError) when one
    # is missing: a worker on a fresh checkout crashed, and "Prefer: respond-async" answered
    # 503, until scripts/demo had made them. Made here, idempotently (three mkdir calls).
    # A folder that cannot be made (read-only checkout) is left for kombu to report.
    for _folder in ("out", "processed", "control"):
        try:
            (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    # kombu's transport, with each message renamed into place once written: kombu's own can
    # hand a polling worker a half-written message, which is then lost (kombu #1551).
    CELERY_BROKER_TRANSPORT = "openai_django.filesystem_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu's default is a "control" folder in the working directory.
        "control_folder": str(_broker_dir / "control"),
        # kombu polls the folder once a second by default: a job would wait up to 1 s.
        "polling_interval": 0.1,
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# One message reserved per worker process: a worker that dies takes no others' calls with it,
# and a burst spreads over every free process (see "Reliability" in the README).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless
# this is set (then: every 1,000 tasks); the task applies CONN_MAX_AGE itself, as a request.
CELERY_DB_REUSE_MAX = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Recover calls left running by dead workers (`celery -A project worker -B` runs beat too).
CELERY_BEAT_SCHEDULE = {
    "openai-django-sweep-stale-calls": {
        "task": "openai_django.sweep_stale_calls",
        "schedule": 60.0,
    },
    # Apply OPENAI_DJANGO["RETENTION"] hourly.
    "openai-django-purge": {"task": "openai_django.retention.purge_expired", "schedule": 3600.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "openai_django": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    },
}

LOGIN_URL = "admin:login"
