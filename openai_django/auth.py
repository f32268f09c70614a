"""Client keys: ``Authorization: Bearer <key>`` with a key the site issued.

Every request re-reads the key's state (revoked, expired, its user deactivated, metadata-only)
with one small SQL query, so a revocation takes effect on the very next request; only the
``APIKey`` and user *objects* are kept per process, because building them through the ORM
(``select_related``, model instantiation) cost half a millisecond a call, more than the rest of
the gateway's own work (see docs/performance.md).
"""

import threading
import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication

from openai_django import writer
from openai_django.errors import AuthenticationFailed
from openai_django.models import KEY_PREFIX, APIKey, hash_key

# ``last_used_at`` is written at most this often per key, so a busy key does not add an
# UPDATE to every call.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# How long a process keeps a key's objects (never its state) before loading them again.
OBJECT_CACHE_SECONDS = 60.0
OBJECT_CACHE_MAX = 10_000

_objects = {}  # hashed key -> (APIKey with its user, monotonic time loaded)
_objects_lock = threading.Lock()
_state_sql = {}  # connection vendor -> SQL, or None when the user model does not fit it


def _state_query(connection):
    """SQL reading a key's current state on ``connection``, or ``None`` (then the ORM is
    used)."""
    vendor = connection.vendor
    if vendor in _state_sql:
        return _state_sql[vendor]
    user_model = get_user_model()
    quote = connection.ops.quote_name
    try:
        active_column = user_model._meta.get_field("is_active").column
    except Exception:
        _state_sql[vendor] = None
        return None
    keys = APIKey._meta
    sql = (
        f"SELECT k.{quote('id')}, k.{quote(keys.get_field('user').column)}, "
        f"k.{quote('metadata_only')}, "
        f"(k.{quote('revoked_at')} IS NULL AND (k.{quote('expires_at')} IS NULL "
        f"OR k.{quote('expires_at')} > %s)), u.{quote(active_column)}, "
        f"(k.{quote('last_used_at')} IS NULL OR k.{quote('last_used_at')} < %s) "
        f"FROM {quote(keys.db_table)} k JOIN {quote(user_model._meta.db_table)} u "
        f"ON u.{quote(user_model._meta.pk.column)} = k.{quote(keys.get_field('user').column)} "
        f"WHERE k.{quote('hashed_key')} = %s"
    )
    _state_sql[vendor] = sql
    return sql


def _forget(**kwargs):
    with _objects_lock:
        _objects.clear()


post_save.connect(_forget, sender=APIKey, dispatch_uid="openai_django.auth.forget_save")
post_delete.connect(_forget, sender=APIKey, dispatch_uid="openai_django.auth.forget_delete")
setting_changed.connect(_forget, dispatch_uid="openai_django.auth.forget_settings")


def is_site_key(header):
    """Whether an ``Authorization`` header carries a key of the kind the site issues."""
    scheme, _, raw = header.partition(" ")
    return scheme.lower() == "bearer" and raw.strip().startswith(KEY_PREFIX)


def _mask(raw):
    return f"{raw[:6]}…{raw[-4:]}" if len(raw) > 12 else "…"


def authenticate_key(header):
    """Return the active :class:`APIKey` for an ``Authorization`` header value, or raise."""
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=None,
        )
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise AuthenticationFailed(
            "The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_api_key"
        )
    hashed = hash_key(raw)
    # The default database's connection looked up once: each ``django.db.connection.x`` is
    # a ``__getattr__`` on a proxy, then on the thread-critical local of the connections
    # (two AttributeErrors and a RuntimeError raised and caught each time).
    connection = connections[DEFAULT_DB_ALIAS]
    sql = _state_query(connection)
    if sql is None:
        return _authenticate_orm(hashed, raw)
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    params = [adapt(now), adapt(now - LAST_USED_RESOLUTION), hashed]
    row = _fetchone(connection, sql, params)
    if row is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {_mask(raw)}.")
    key_id, user_id, metadata_only, active, user_active, stale = row
    if not active or not user_active:
        raise AuthenticationFailed(f"This API key has been revoked or expired: {_mask(raw)}.")
    cached = _objects.get(hashed)
    if (cached is None or cached[0].pk != key_id or cached[0].user_id != user_id
            or time.monotonic() - cached[1] > OBJECT_CACHE_SECONDS):
        key = APIKey.objects.select_related("user").get(pk=key_id)
        with _objects_lock:
            if len(_objects) >= OBJECT_CACHE_MAX:
                _objects.clear()
            _objects[hashed] = (key, time.monotonic())
    else:
        key = cached[0]
    key.metadata_only = bool(metadata_only)
    if stale:
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def _fetchone(connection, sql, params):
    """The query's first row. On SQLite, when nothing observes the connection's queries, the
    statement goes straight to the ``sqlite3`` connection (as openai_django/writer.py's
    ``execute``: placeholders converted once per statement, errors mapped to Django's); else
    through a Django cursor. Callgrind, 200 recorded chat calls in one process, with the one
    connection lookup above: 3.34 M -> 3.15 M instructions a call."""
    if writer._direct(connection):
        with connection.wrap_database_errors:
            cursor = connection.connection.execute(writer._qmark(sql), params)
            try:
                return cursor.fetchone()
            finally:
                cursor.close()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _authenticate_orm(hashed, raw):
    try:
        key = APIKey.objects.select_related("user").get(hashed_key=hashed)
    except APIKey.DoesNotExist:
        raise AuthenticationFailed(f"Incorrect API key provided: {_mask(raw)}.") from None
    if not key.is_active or not key.user.is_active:
        raise AuthenticationFailed(f"This API key has been revoked or expired: {_mask(raw)}.")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


class APIKeyAuthentication(BaseAuthentication):
    """DRF authentication with the site's keys; sets ``request.auth`` to the APIKey.

    A request with no ``Authorization`` header, one of another scheme, or a Bearer token that
    is not one of the site's keys (they all start with ``sk-od-``: a JWT, another class's
    token) is left to the next class (DRF's convention: ``SessionAuthentication`` or a token
    class after it, in ``AUTHENTICATION_CLASSES``); a key of the site's that is not valid
    (unknown, revoked, expired) is refused outright."""

    needs_site_middleware = False

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not is_site_key(header):
            return None
        key = authenticate_key(header)
        return key.user, key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


def needs_site_middleware():
    """Whether the gateway's operation views need the site's middleware (sessions,
    ``request.user``) to authenticate: ``False`` unless ``AUTHENTICATION_CLASSES`` names such a
    class (see :func:`openai_django.access.needs_site_middleware`)."""
    from openai_django.access import needs_site_middleware

    return needs_site_middleware()
