"""Client keys: ``Authorization: Bearer <key>`` with a key the site issued."""

from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication

from openai_django.errors import AuthenticationFailed
from openai_django.models import APIKey, hash_key

# ``last_used_at`` is written at most this often per key, so a busy key does not add an
# UPDATE to every call.
LAST_USED_RESOLUTION = timedelta(seconds=60)


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
    try:
        key = APIKey.objects.select_related("user").get(hashed_key=hash_key(raw))
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
    """DRF authentication with the site's keys; sets ``request.auth`` to the APIKey."""

    def authenticate(self, request):
        key = authenticate_key(request.META.get("HTTP_AUTHORIZATION", ""))
        return key.user, key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'
