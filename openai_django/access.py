"""Who may call the gateway's operations, and how often: the site's own logins and throttles.

By default the operation views accept the keys the site issued and nothing else, checked by
:func:`openai_django.auth.authenticate_key` with no DRF machinery in the way (the fast path).

``OPENAI_DJANGO["AUTHENTICATION_CLASSES"]`` names DRF authentication classes to accept instead,
tried in order as a DRF view tries them; with ``SessionAuthentication`` a user logged in to the
site calls ``/v1/...`` from the site's own pages, CSRF enforced exactly as DRF enforces it (an
unsafe method needs the ``X-CSRFToken`` header). A call made that way is recorded under its
user, with no key. Include ``"openai_django.auth.APIKeyAuthentication"`` to keep accepting keys.

``OPENAI_DJANGO["THROTTLE_CLASSES"]`` names DRF throttle classes run against every operation
call, after its body has been read and checked and before anything is recorded or sent;
``None`` (the default) takes ``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``, so a site that
throttles its API throttles the gateway too. A throttled call is answered 429 in the OpenAI
shape with ``Retry-After``, and recorded as rejected. The throttles keep their history where
DRF keeps it (Django's default cache: per process with the local-memory cache, shared with
Redis or memcached).
"""

import math

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from openai_django.conf import app_settings
from openai_django.errors import NO_KEY, AuthenticationFailed, PermissionDenied, Throttled

_cache = {}


def authentication_classes():
    """The configured authentication classes, or ``None`` when only the site's issued keys
    are accepted (the default, served without DRF)."""
    try:
        return _cache["authentication"]
    except KeyError:
        pass
    from openai_django.auth import APIKeyAuthentication

    value = app_settings.AUTHENTICATION_CLASSES
    classes = None
    if value is not None:
        classes = app_settings.imported("AUTHENTICATION_CLASSES")
        if not classes:
            raise ImproperlyConfigured(
                "settings.OPENAI_DJANGO['AUTHENTICATION_CLASSES'] is empty: no caller could "
                "be accepted. Use None for the site's keys only.")
        if classes == (APIKeyAuthentication,):
            classes = None  # keys only: the same as the default, and as fast
    _cache["authentication"] = classes
    return classes


def throttle_classes():
    """The throttle classes run against every operation call (an empty tuple: none)."""
    try:
        return _cache["throttle"]
    except KeyError:
        pass
    value = app_settings.THROTTLE_CLASSES
    if value is None:
        from rest_framework.settings import api_settings

        classes = tuple(api_settings.DEFAULT_THROTTLE_CLASSES)
    else:
        classes = app_settings.imported("THROTTLE_CLASSES")
    _cache["throttle"] = classes
    return classes


def needs_site_middleware():
    """Whether the operation views need the site's middleware to authenticate a request
    (the session and ``request.user`` of ``SessionAuthentication``): a lean entry point that
    skips Django's middleware must then serve through the full stack.

    ``False`` with the default (issued keys only). A configured class other than
    :class:`~openai_django.auth.APIKeyAuthentication` counts as needing it, unless it says
    otherwise with a class attribute ``needs_site_middleware = False`` (a header-token class
    reads nothing the middleware sets)."""
    from openai_django.auth import APIKeyAuthentication

    classes = authentication_classes()
    if not classes:
        return False
    return any(getattr(cls, "needs_site_middleware", not issubclass(cls, APIKeyAuthentication))
               for cls in classes)


class _BodyLeftAlone:
    """The DRF request's only parser: it never reads the body (the gateway reads it, once,
    after checking its size).

    ``SessionAuthentication``'s CSRF check reads ``request.POST`` for a
    ``csrfmiddlewaretoken`` field: it finds none (a multipart upload is not parsed before its
    size is checked), so the token comes from the ``X-CSRFToken`` header, as scripts send it.
    """

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        from django.http import QueryDict
        from django.utils.datastructures import MultiValueDict
        from rest_framework.parsers import DataAndFiles

        return DataAndFiles(QueryDict(), MultiValueDict())


def _forget_form(request, drf_request):
    # DRF hands a form's (here empty) data to the Django request as its POST and FILES: take
    # them back, so the gateway reads the real ones.
    data = drf_request.__dict__.get("_data")
    if data is not None and request.__dict__.get("_post") is data:
        del request._post
        request.__dict__.pop("_files", None)


def authenticate(request, classes):
    """``(user, api_key or None, drf_request)`` of a request by the configured classes, as a
    DRF view authenticates: the first class that answers decides, and its refusal (a bad key,
    a failed CSRF check) is final. Raises the 401 when none answers."""
    from rest_framework import exceptions as drf_exceptions
    from rest_framework.authentication import SessionAuthentication
    from rest_framework.request import Request

    from openai_django.models import APIKey

    drf_request = Request(request, parsers=[_BodyLeftAlone()],
                          authenticators=[cls() for cls in classes])
    try:
        user = drf_request.user
    except drf_exceptions.PermissionDenied as exc:
        # SessionAuthentication's CSRF check: a 403 that says so.
        raise PermissionDenied(str(exc.detail), code="csrf_failed"
                               if str(exc.detail).startswith("CSRF Failed") else None) from None
    finally:
        _forget_form(request, drf_request)
    if user is None or not user.is_authenticated:
        not_authenticated(request)
    if _bearer(request) and isinstance(drf_request.successful_authenticator,
                                       SessionAuthentication):
        # A Bearer token no class took, beside a session: wrong credentials are not made
        # right by a cookie.
        not_authenticated(request)
    auth = drf_request.auth
    return user, auth if isinstance(auth, APIKey) else None, drf_request


def _bearer(request):
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def not_authenticated(request):
    """Raise the 401 for a request no configured class accepted (the messages of
    :func:`~openai_django.auth.authenticate_key`)."""
    from openai_django.auth import _mask

    header = request.META.get("HTTP_AUTHORIZATION", "")
    if _bearer(request):
        raise AuthenticationFailed(
            f"Incorrect API key provided: {_mask(header.partition(' ')[2].strip())}.")
    if header:
        raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.",
                                   code="invalid_api_key")
    raise AuthenticationFailed(NO_KEY, code=None)


def throttle(request, invocation, view, drf_request=None):
    """Run the throttle classes against a call; one that refuses makes it a rejected call,
    answered 429 with ``Retry-After`` (the longest wait any refusing throttle asks for)."""
    from rest_framework.request import Request

    from openai_django import recorder

    if drf_request is None:
        drf_request = Request(request, parsers=[_BodyLeftAlone()])
        drf_request.user = invocation.user
        drf_request.auth = invocation.api_key
    waits = []
    for cls in throttle_classes():
        throttle_ = cls()
        if not throttle_.allow_request(drf_request, view):
            waits.append(throttle_.wait())
    if not waits:
        return
    known = [wait for wait in waits if wait is not None]
    wait = math.ceil(max(known)) if known else None
    exc = Throttled(
        "Too many requests: this site's rate limit was reached."
        + (f" Try again in {wait} seconds." if wait is not None else ""),
        headers={"Retry-After": str(wait)} if wait is not None else None)
    exc.call = recorder.reject(invocation, exc)
    raise exc


def _reset(*, setting, **kwargs):
    if setting in ("OPENAI_DJANGO", "REST_FRAMEWORK"):
        _cache.clear()


setting_changed.connect(_reset, dispatch_uid="openai_django.access.reset")


@checks.register()
def check_access_settings(app_configs, **kwargs):
    """E031: AUTHENTICATION_CLASSES or THROTTLE_CLASSES that cannot be imported (or empty)."""
    errors = []
    for resolve in (authentication_classes, throttle_classes):
        try:
            resolve()
        except ImproperlyConfigured as exc:
            errors.append(checks.Error(str(exc), hint="Name DRF classes by their dotted path.",
                                       id="openai_django.E031"))
    return errors
