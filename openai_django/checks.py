"""System checks (``manage.py check``)."""

from django.conf import settings
from django.core import checks

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
    if not app_settings.API_KEY:
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
    if base.startswith("http://") and not settings.DEBUG:
        errors.append(checks.Warning(
            "OPENAI_DJANGO['BASE_URL'] uses plain HTTP outside DEBUG: prompts and the upstream "
            "key cross the network unencrypted.",
            hint="Use an https:// upstream, or a loopback/private address you trust.",
            id="openai_django.W003",
        ))
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
