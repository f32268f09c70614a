"""A lean ASGI entry for the gateway's operations, in front of the site's Django application.

``openai_django.asgi.get_asgi_application()`` (or :class:`GatewayASGI` around a site's own
ASGI application, e.g. a Channels router's ``"http"`` entry) serves every request whose path
resolves to one of the gateway's async operation views (``/v1/chat/completions``, the
passthrough under ``/v1/``...) itself, through the very same view code as Django would (the
key, limits and the record are identical), and hands every other request (the admin, the site's
pages, the REST log, websockets, lifespan) to the wrapped application unchanged.

What it saves on each /v1/ call, measured in docs/performance.md: Django's ASGI handler runs
every request in a ``ThreadSensitiveContext`` whose thread lives as long as the response (the
whole of a 60 s stream), and each ``MiddlewareMixin`` middleware of the site hops to that thread
(``sync_to_async``) before and after the view, as does every sync receiver of
``request_started``. The lean path runs on the event loop and goes to a thread only where the
gateway itself does (the database pool of openai_django/threads.py).

Which site middleware a /v1/ call goes through here, explicitly (settings ``ASGI_LEAN_*``):

- ``ASGI_LEAN_SKIP_MIDDLEWARE``: not run. By default the cookie-session machinery (sessions,
  auth, CSRF, messages): a /v1/ call authenticates with a bearer key and its views are CSRF
  exempt, so these have nothing to do for it.
- ``ASGI_LEAN_INLINE_MIDDLEWARE``: ``MiddlewareMixin`` middleware that only look at the request
  and set headers (no database, no I/O), run on the event loop, without a thread: by default
  Django's ``SecurityMiddleware`` (HSTS, nosniff, SSL redirect...), ``CommonMiddleware`` and
  ``XFrameOptionsMiddleware``, so a /v1/ answer carries the same headers as under Django.
- natively async middleware (``async_capable``, not a ``MiddlewareMixin``, no ``process_view``
  hooks: e.g. django-cors-headers' ``CorsMiddleware``): run as Django runs them, awaited.
- anything else (a sync middleware the gateway knows nothing about: an IP allowlist, a
  tenant router...): the lean path is off and every request goes to Django, with a warning
  at the first request naming the middleware. Nothing of the site is silently skipped.

The lean path is off too, and the request is Django's, when ``ASGI_LEAN`` is False (the
opt-out), when the gateway accepts credentials that need the site's session and auth
middleware (``AUTHENTICATION_CLASSES`` naming anything but the issued keys, e.g. DRF's
``SessionAuthentication``), or when the operations are not served by the async views
(``TRANSPORT = "sync"``).
"""

import asyncio
import logging
import threading
from contextlib import aclosing

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.signals import setting_changed
from django.http import FileResponse, HttpResponseServerError
from django.urls import Resolver404, get_resolver, set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

logger = logging.getLogger("openai_django.asgi")

# Receivers of ``request_started`` that concern the calling thread's database connections:
# the lean path's thread (the event loop) has none (the database pool's threads manage their
# own), so a request here sends the signal only when the site connected receivers of its own.
_THREAD_RECEIVERS = {"django.db.reset_queries", "django.db.close_old_connections"}
# Receivers of ``request_finished`` that may run on the event loop: those, Django's
# ``close_caches`` (a no-op but for memcached, whose clients drop their sockets) and
# ``reset_urlconf``, the collector's freeze (gcfreeze.py: a counter; its full collection,
# every 10 min, holds the GIL wherever it runs), the sweep's clock (recovery.py) and the
# closing of ended threads' connections (thread_connections.py): a sweep that is due, and
# connections to close, go to the pool.
_LOOP_FINISHED_RECEIVERS = _THREAD_RECEIVERS | {
    "django.core.cache.close_caches", "django.core.handlers.base.reset_urlconf",
    "openai_django.gcfreeze.after_request", "openai_django.recovery.maybe_sweep",
    "openai_django.thread_connections.close_orphans"}

KEY_AUTHENTICATION = "openai_django.auth.APIKeyAuthentication"


def get_asgi_application():
    """The site's Django ASGI application behind the gateway's lean entry (what
    ``django.core.asgi.get_asgi_application`` returns, with /v1/ operations served lean)."""
    from django.core.asgi import get_asgi_application as django_asgi

    return GatewayASGI(django_asgi())


class _Plan:
    """Whether the lean path serves, and through which middleware (built from the settings at
    the first request, rebuilt when they change)."""

    def __init__(self, reason=None, middleware=()):
        self.reason = reason  # why requests all go to Django, or None
        self.middleware = middleware  # [(kind, class)] outermost first


def _setting(name, default):
    """An ``OPENAI_DJANGO`` setting read defensively: a setting this version of the package
    may not declare yet (``AUTHENTICATION_CLASSES``) is read from the dict itself."""
    from openai_django.conf import app_settings

    try:
        return getattr(app_settings, name)
    except AttributeError:
        return app_settings.user_settings.get(name, default)


def _dotted(obj):
    return obj if isinstance(obj, str) else f"{obj.__module__}.{obj.__qualname__}"


def needs_site_auth():
    """Whether the gateway's configured authentication goes beyond the issued keys (then a
    /v1/ call needs the site's session and auth middleware: Django serves it). The rule is
    :func:`openai_django.access.needs_site_middleware`'s; a setting that is wrong (a class
    that cannot be imported, an empty list) sends /v1/ to Django too, where the error is
    reported."""
    from openai_django.access import needs_site_middleware

    try:
        return needs_site_middleware()
    except (ImportError, ImproperlyConfigured):
        return True


def _plan(switch="ASGI_LEAN"):
    """Which middleware a lean /v1/ call goes through (``switch``: the setting that turns
    this entry off; openai_django/wsgi.py shares the rest)."""
    if not _setting(switch, True):
        return _Plan(f"OPENAI_DJANGO['{switch}'] is False")
    if needs_site_auth():
        return _Plan("OPENAI_DJANGO['AUTHENTICATION_CLASSES'] accepts more than the issued "
                     "keys (it needs the site's session and auth middleware)")
    skip = set(_setting("ASGI_LEAN_SKIP_MIDDLEWARE", ()))
    inline = set(_setting("ASGI_LEAN_INLINE_MIDDLEWARE", ()))
    chain = []
    for path in settings.MIDDLEWARE or ():
        if path in skip:
            continue
        cls = import_string(path)
        hooks = [h for h in ("process_view", "process_exception", "process_template_response")
                 if hasattr(cls, h)]
        if path in inline and isinstance(cls, type) and issubclass(cls, MiddlewareMixin):
            if hooks:
                return _Plan(f"middleware {path} has {', '.join(hooks)} (not run inline)")
            chain.append(("inline", cls))
        elif (getattr(cls, "async_capable", False) and not hooks
              and not (isinstance(cls, type) and issubclass(cls, MiddlewareMixin))):
            chain.append(("async", cls))
        else:
            return _Plan(f"middleware {path} is neither natively async nor listed in "
                         f"OPENAI_DJANGO['ASGI_LEAN_INLINE_MIDDLEWARE'] or "
                         f"['ASGI_LEAN_SKIP_MIDDLEWARE']")
    return _Plan(None, chain)


def _inline(cls, get_response):
    """A header-only ``MiddlewareMixin`` run on the event loop: its ``process_request`` and
    ``process_response`` called directly, as its sync ``__call__`` would."""
    instance = cls(get_response)
    before = getattr(instance, "process_request", None)
    after = getattr(instance, "process_response", None)

    async def call(request):
        response = before(request) if before else None
        if response is None:
            response = await get_response(request)
        return after(request, response) if after else response

    return call


class _Handler(ASGIHandler):
    """Django's ASGI request and response code (body reading, ``ASGIRequest``, sending),
    without its middleware chain."""

    def __init__(self):  # no load_middleware(): the lean path has its own chain
        self._middleware_chain = None


class LeanEntry:
    """What the lean entries (this one, and openai_django/wsgi.py's) share: the plan and the
    middleware chain, built at the first request from the settings and built again when
    ``OPENAI_DJANGO``, ``MIDDLEWARE`` or ``ROOT_URLCONF`` change, with a warning when the lean
    path is off. A subclass says which setting turns it off and builds its chain."""

    switch = "ASGI_LEAN"
    name = "ASGI"
    logger = logger

    # At most this many paths' matches are kept (then they are all forgotten): the paths of
    # operations with ids in them (/v1/files/file-abc) are as many as the ids.
    MATCHES_MAX = 1024

    def __init__(self, application):
        self.application = application
        self._lock = threading.Lock()
        self._state = None  # (plan, chain) once built
        self._warned = None
        self._matches = None  # (resolver, {path_info: ResolverMatch}, whether it keeps them)
        setting_changed.connect(self._reset)

    def _reset(self, *, setting, **kwargs):
        if setting in ("OPENAI_DJANGO", "MIDDLEWARE", "ROOT_URLCONF"):
            self._state = None
            self._matches = None

    def _operation_match(self, path_info):
        """``get_resolver().resolve(path_info)`` when it is an operation view of this entry
        (:meth:`_is_operation`), else ``None``. A path's match is kept, per resolver (a
        changed ``ROOT_URLCONF``, ``clear_url_caches()``: another resolver, nothing kept), so
        a call resolves its URL once in the process instead of once a request: the three
        nested resolvers, their regular expressions and the ``ResolverMatch`` cost 110 K of
        3.45 M instructions a recorded chat call (callgrind, 200 calls in one process). Not
        kept: paths that are not operations (they go to Django, which resolves them anyway,
        and anyone can send any number of them), and any path when the URLconf uses
        ``i18n_patterns`` (a match depends on the active language there)."""
        resolver = get_resolver()
        matches = self._matches
        if matches is None or matches[0] is not resolver:
            from django.conf.urls.i18n import is_language_prefix_patterns_used

            keep = not is_language_prefix_patterns_used(resolver.urlconf_name)[0]
            matches = self._matches = (resolver, {}, keep)
        match = matches[1].get(path_info)
        if match is not None:
            return match
        try:
            match = resolver.resolve(path_info)
        except Resolver404:
            return None
        if not self._is_operation(getattr(match.func, "view_class", None)):
            return None
        if matches[2]:
            if len(matches[1]) >= self.MATCHES_MAX:
                matches[1].clear()
            matches[1][path_info] = match
        return match

    def _is_operation(self, view_class):
        """Whether ``view_class`` (a URL's ``view_class``, or ``None``) is served here."""
        raise NotImplementedError

    def _chain(self, plan):
        """``(plan, chain)``: the chain of ``plan``'s middleware around the view (or another
        plan, with its reason, when the chain cannot be built)."""
        raise NotImplementedError

    def _get_state(self):
        state = self._state
        if state is None:
            with self._lock:
                plan, chain = self._chain(_plan(self.switch))
                state = self._state = (plan, chain)
                if plan.reason and self._warned != plan.reason:
                    self._warned = plan.reason
                    self.logger.warning("The gateway's lean %s entry is off, Django serves "
                                        "every request: %s", self.name, plan.reason)
        return state


class GatewayASGI(LeanEntry):
    """An ASGI application: the gateway's async operation views served lean, everything else
    by ``application`` (the site's Django ASGI application, or any ASGI app around it)."""

    def __init__(self, application):
        super().__init__(application)
        self._handler = _Handler()

    def _chain(self, plan):
        chain = self._view
        for kind, cls in reversed(plan.middleware):
            if kind == "inline":
                chain = _inline(cls, chain)
            else:
                instance = cls(chain)
                if not iscoroutinefunction(instance):
                    instance = markcoroutinefunction(instance)
                chain = instance
        return plan, chain

    def lean_match(self, scope):
        """The URL match of an async operation view for this HTTP scope, or ``None`` (then the
        request is the wrapped application's)."""
        if scope["type"] != "http":
            return None
        plan, _ = self._get_state()
        if plan.reason:
            return None
        script_name = get_script_prefix(scope)
        path = scope["path"]
        return self._operation_match(path.removeprefix(script_name) if script_name else path)

    def _is_operation(self, view_class):
        from openai_django.views import AsyncOperationView

        return isinstance(view_class, type) and issubclass(view_class, AsyncOperationView)

    async def __call__(self, scope, receive, send):
        match = self.lean_match(scope)
        if match is None:
            return await self.application(scope, receive, send)
        await self.handle(scope, receive, send, match)

    async def _view(self, request):
        match = request.resolver_match
        return await match.func(request, *match.args, **match.kwargs)

    async def handle(self, scope, receive, send, match):
        """Django's ``ASGIHandler.handle`` for one operation: the body read, the request
        built, the view run while ``http.disconnect`` is listened for (a client that hangs up
        cancels the view or the stream: the call is finished as ``client_disconnected``), the
        response sent, then closed in the database pool (``request_finished``'s receivers,
        e.g. the sweep, use the ORM)."""
        from openai_django.threads import db

        handler = self._handler
        try:
            body_file = await handler.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        if _site_receivers(signals.request_started):
            await signals.request_started.asend(sender=ASGIHandler, scope=scope)
        request, error_response = handler.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await handler.send_response(error_response, send)
            await db(error_response.close)()
            return
        request.resolver_match = match
        _, chain = self._get_state()

        async def process_request():
            try:
                response = await chain(request)
            except Exception:
                logger.exception("Internal error serving %s %s", request.method, request.path)
                response = HttpResponseServerError(b'{"error": {"message": "Internal server '
                                                   b'error.", "type": "server_error", '
                                                   b'"param": null, "code": null}}',
                                                   content_type="application/json")
            # As Django's get_response: the request's uploaded files are closed (temporary
            # files deleted) with the response.
            response._resource_closers.append(request.close)
            if isinstance(response, FileResponse):
                response.block_size = handler.chunk_size
            try:
                await send_response(handler, response, send)
            except asyncio.CancelledError:
                pass  # the client went away while it was sent
            return response

        tasks = [asyncio.create_task(handler.listen_for_disconnect(receive)),
                 asyncio.create_task(process_request())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            if _site_receivers(signals.request_finished, _LOOP_FINISHED_RECEIVERS):
                await db(signals.request_finished.send)(sender=ASGIHandler)
            else:
                signals.request_finished.send(sender=ASGIHandler)
        else:
            if _closes_on_the_loop(response, request):
                response.close()
            else:
                await db(response.close)()
        body_file.close()


async def send_response(handler, response, send):
    """Django's ``ASGIHandler.send_response``; an async stream (the gateway's relays) is sent
    part by part from its own iterator, without Django's two async-generator wrappers
    (``__aiter__``, ``streaming_content``) and its chunking generator on every part: the same
    messages (one ``http.response.body`` a part, parts over ``chunk_size`` split), the
    iterator closed the same way (``aclosing``), three hops fewer an event."""
    if not (response.streaming and getattr(response, "is_async", False)):
        return await handler.send_response(response, send)
    headers = []
    for header, value in response.items():
        if isinstance(header, str):
            header = header.encode("ascii")
        if isinstance(value, str):
            value = value.encode("latin1")
        headers.append((bytes(header), bytes(value)))
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})
    limit = handler.chunk_size
    make_bytes = response.make_bytes
    async with aclosing(response._iterator) as content:
        async for part in content:
            if type(part) is not bytes:
                part = make_bytes(part)
            if len(part) <= limit:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            else:
                for chunk, _ in handler.chunk_bytes(part):
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
    await send({"type": "http.response.body"})


def _closes_on_the_loop(response, request):
    """Whether closing ``response`` touches neither the database nor a file, so that it is
    closed on the event loop instead of with a hop to the database pool (one of three a call
    made before; a hop is 30-160 us of CPU, bench.hop_bench): its closers are the request's
    (no uploaded file) and a stream relay's that already finished its record, and
    ``request_finished`` has no receiver but the loop-safe ones. Anything else (a file
    response, an unfinished relay, a site's receiver) is closed in the pool, as Django's
    handler does."""
    from openai_django.gateway import StreamRelay

    if _site_receivers(signals.request_finished, _LOOP_FINISHED_RECEIVERS):
        return False
    for closer in response._resource_closers:
        owner = getattr(closer, "__self__", None)
        if owner is request:
            if getattr(request, "_files", None):
                return False
        elif not (isinstance(owner, StreamRelay) and owner.finished):
            return False
    return True


def _site_receivers(signal, known=_THREAD_RECEIVERS):
    """Whether ``signal`` has receivers beyond the ``known`` ones (by default Django's own
    per-thread database ones)."""
    if not signal.receivers:
        return False
    live = signal._live_receivers(ASGIHandler)  # Django 5: (sync, async) receivers
    if isinstance(live, tuple):
        sync_receivers, async_receivers = live
        if async_receivers:
            return True
    else:
        sync_receivers = live
    return any(f"{getattr(r, '__module__', '')}.{getattr(r, '__qualname__', '')}"
               not in known for r in sync_receivers)
