"""System checks (``manage.py check``).

Ids: W001 unknown settings, W002 no upstream key, E001 storage alias missing, W003 plain-HTTP
upstream outside DEBUG, W004 GZipMiddleware, W005 bodies recorded with no retention, E002 a bad
RETENTION value, E003 a REDACT hook that cannot be imported or called, E004 a bad ARTIFACT_URLS
value, W006 signed artifact URLs on a storage that cannot sign, W007 PostgreSQL without
persistent connections, W008 nothing sweeps calls orphaned by a dead process; E101, E102,
W101, W102 the upstreams' settings (openai_django/upstreams.py ``check``).
"""

import numbers

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from openai_django.conf import app_settings


@checks.register()
def check_settings(app_configs, **kwargs):
    errors = []
    unknown = app_settings.unknown_keys()
    if unknown:
        errors.append(checks.Warning(
            f"Unknown keys in settings.OPENAI_DJANGO: {', '.join(unknown)}.",
            hint="Check the spelling against the settings reference in the README.",
            id="openai_django.W001",
        ))
    if not app_settings.API_KEY and not app_settings.UPSTREAMS:
        errors.append(checks.Warning(
            "OPENAI_DJANGO['API_KEY'] is not set: calls reach the upstream without a key.",
            hint="Set it (e.g. from the OPENAI_API_KEY environment variable), unless the "
                 "upstream needs none.",
            id="openai_django.W002",
        ))
    if app_settings.STORAGE not in getattr(settings, "STORAGES", {}):
        errors.append(checks.Error(
            f"OPENAI_DJANGO['STORAGE'] is {app_settings.STORAGE!r}, which is not an alias in "
            f"settings.STORAGES.",
            hint=f"Add {app_settings.STORAGE!r} to STORAGES or name an existing alias.",
            id="openai_django.E001",
        ))
    base = str(app_settings.BASE_URL or "")
    if base.startswith("http://") and not settings.DEBUG and not app_settings.UPSTREAMS:
        errors.append(checks.Warning(
            "OPENAI_DJANGO['BASE_URL'] uses plain HTTP outside DEBUG: prompts and the upstream "
            "key cross the network unencrypted.",
            hint="Use an https:// upstream, or a loopback/private address you trust.",
            id="openai_django.W003",
        ))
    from openai_django import upstreams

    errors += upstreams.check()  # E101, E102, W101, W102: UPSTREAMS, proxies, TLS files
    errors += _check_retention()
    errors += _check_redact()
    errors += _check_artifact_urls()
    errors += _check_databases()
    errors += _check_sweep()
    middleware = getattr(settings, "MIDDLEWARE", [])
    if "django.middleware.gzip.GZipMiddleware" in middleware:
        errors.append(checks.Warning(
            "GZipMiddleware buffers event streams: streamed completions would reach clients "
            "in lumps.",
            hint="Remove GZipMiddleware, or compress in the web server excluding "
                 "text/event-stream.",
            id="openai_django.W004",
        ))
    return errors


def _check_retention():
    from openai_django.retention import KINDS

    value = app_settings.RETENTION
    hint = ('Use {"bodies": days, "artifacts": days, "metadata": days}, each a positive number '
            'of days or None to keep forever.')
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return [checks.Error(f"OPENAI_DJANGO['RETENTION'] must be a dict, not {value!r}.",
                             hint=hint, id="openai_django.E002")]
    errors = []
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        errors.append(checks.Error(
            f"OPENAI_DJANGO['RETENTION'] has unknown kinds: {', '.join(map(str, unknown))}.",
            hint=hint, id="openai_django.E002"))
    for kind in KINDS:
        days = value.get(kind)
        if days is None:
            continue
        if isinstance(days, bool) or not isinstance(days, numbers.Real) or days <= 0:
            errors.append(checks.Error(
                f"OPENAI_DJANGO['RETENTION'][{kind!r}] is {days!r}: not a positive number "
                f"of days.", hint=hint, id="openai_django.E002"))
    if app_settings.RECORD_BODIES:
        forever = [kind for kind in ("bodies", "artifacts") if value.get(kind) is None]
        if forever:
            errors.append(checks.Warning(
                f"Request and response bodies are recorded, but {' and '.join(forever)} "
                f"{'are' if len(forever) > 1 else 'is'} kept forever: prompts, answers and "
                f"uploaded files never leave the database or the storage.",
                hint='Set OPENAI_DJANGO["RETENTION"] (e.g. {"bodies": 30, "artifacts": 30, '
                     '"metadata": 365}) and schedule the purge (celery beat task '
                     '"openai_django.retention.purge_expired", or `manage.py openai_purge` '
                     'from cron); or set RECORD_BODIES = False.',
                id="openai_django.W005"))
    return errors


def _check_redact():
    raw = app_settings.user_settings.get("REDACT")
    if raw is None:
        return []
    try:
        hook = app_settings.REDACT
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint='Give a dotted path to a callable, e.g. '
                             '"openai_django.redaction.redact_pii".', id="openai_django.E003")]
    if not callable(hook):
        return [checks.Error(f"OPENAI_DJANGO['REDACT'] = {raw!r} is not callable.",
                             hint="It must be a function hook(value, *, call, field) -> value.",
                             id="openai_django.E003")]
    return []


def _check_artifact_urls():
    from openai_django.storage import ARTIFACT_URL_MODES, can_sign

    mode = app_settings.ARTIFACT_URLS
    if mode not in ARTIFACT_URL_MODES:
        return [checks.Error(
            f"OPENAI_DJANGO['ARTIFACT_URLS'] is {mode!r}.",
            hint=f"Use one of: {', '.join(map(repr, ARTIFACT_URL_MODES))}.",
            id="openai_django.E004")]
    if mode != "signed" or app_settings.STORAGE not in getattr(settings, "STORAGES", {}):
        return []
    from django.core.files.storage import storages

    try:
        storage = storages[app_settings.STORAGE]
    except Exception:
        return []
    if can_sign(storage):
        return []
    return [checks.Warning(
        f"OPENAI_DJANGO['ARTIFACT_URLS'] is 'signed', but the storage "
        f"{app_settings.STORAGE!r} ({type(storage).__name__}) cannot make expiring URLs: "
        f"artifacts are streamed through the app instead.",
        hint="Use django-storages' S3 backend with querystring_auth on (and no unsigned "
             "custom_domain), or set ARTIFACT_URLS to 'stream'.",
        id="openai_django.W006")]


def _check_databases(databases=None):
    errors = []
    if databases is None:
        databases = getattr(settings, "DATABASES", {})
    for alias, database in databases.items():
        if "postgresql" not in database.get("ENGINE", ""):
            continue
        pooled = bool((database.get("OPTIONS") or {}).get("pool"))
        if not pooled and database.get("CONN_MAX_AGE", 0) == 0:
            errors.append(checks.Warning(
                f"DATABASES[{alias!r}] opens a new PostgreSQL connection for every request "
                f"(CONN_MAX_AGE is 0): about 8 ms added to each call.",
                hint='Set CONN_MAX_AGE (e.g. 600) with CONN_HEALTH_CHECKS = True, or '
                     'OPTIONS = {"pool": True} (Django 5.1+, psycopg 3).',
                id="openai_django.W007"))
    return errors


SWEEP_TASK = "openai_django.sweep_stale_calls"


def _check_sweep():
    """W008: with the web processes' own sweep off and no beat entry for the sweep task, a
    call orphaned by a crashed process stays ``running`` until someone runs ``openai_sweep``
    (silence the check when cron does, with ``SILENCED_SYSTEM_CHECKS``)."""
    if app_settings.SWEEP_INTERVAL is not None:
        return []
    schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", None) or {}
    if any(isinstance(entry, dict) and entry.get("task") == SWEEP_TASK
           for entry in schedule.values()):
        return []
    return [checks.Warning(
        "Nothing sweeps calls orphaned by a dead process: OPENAI_DJANGO['SWEEP_INTERVAL'] is "
        "None and CELERY_BEAT_SCHEDULE has no entry for openai_django.sweep_stale_calls.",
        hint="Run 'manage.py openai_sweep' from cron (then silence openai_django.W008), "
             "schedule the task in beat, or set SWEEP_INTERVAL.",
        id="openai_django.W008")]
