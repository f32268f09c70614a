"""A lean WSGI entry for the gateway's operations, in front of the site's Django application.

``openai_django.wsgi.get_wsgi_application()`` (or :class:`GatewayWSGI` around a site's own
WSGI application) serves every request whose path resolves to one of the gateway's operation
views itself, through the very same view code as Django would (the key, limits, the policy
and the record are identical), and hands every other request (the admin, the site's pages,
the REST log) to the wrapped application unchanged.

What it saves on each /v1/ call: the site's cookie-session middleware (sessions, auth, CSRF,
messages: a /v1/ call authenticates with a bearer key and its views are CSRF exempt), and the
second URL resolution of Django's handler. Measured with callgrind over 100 recorded chat
calls in one process: the demo's seven middleware cost 0.44 M of 4.31 M instructions a call
(10 %) (docs/performance.md).

Which middleware a /v1/ call goes through is decided as for the lean ASGI entry
(openai_django/asgi.py), from the same settings: ``ASGI_LEAN_SKIP_MIDDLEWARE`` are not run,
``ASGI_LEAN_INLINE_MIDDLEWARE`` and sync-capable middleware without view hooks are run as
Django runs them, anything else turns the lean path off (a warning at the first request names
it) and Django serves every request. Off too with ``WSGI_LEAN = False``, and when the gateway
accepts credentials that need the site's session (``AUTHENTICATION_CLASSES``). What Django's
handler does around a request stays: ``request_started`` and ``request_finished`` (database
connections, the sweep), the script prefix, exceptions turned into responses, the response
closed by the server.
"""

import logging

from django.core import signals
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIRequest, get_path_info, get_script_name
from django.http.response import ResponseHeaders
from django.urls import set_script_prefix

from openai_django import asgi

logger = logging.getLogger("openai_django.wsgi")


def get_wsgi_application():
    """The site's Django WSGI application behind the gateway's lean entry."""
    from django.core.wsgi import get_wsgi_application as django_wsgi

    return GatewayWSGI(django_wsgi())


class GatewayWSGI(asgi.LeanEntry):
    """A WSGI application: the gateway's operation views served lean, everything else by
    ``application`` (the site's Django WSGI application, or any WSGI app around it)."""

    request_class = WSGIRequest
    switch = "WSGI_LEAN"
    name = "WSGI"
    logger = logger

    def _chain(self, plan):
        chain = convert_exception_to_response(self._view)
        for _, cls in reversed(plan.middleware):
            if not getattr(cls, "sync_capable", True):
                return asgi._Plan(f"middleware {asgi._dotted(cls)} is async only"), None
            chain = convert_exception_to_response(cls(chain))
        return plan, chain

    def lean_match(self, environ):
        """The URL match of a (sync) operation view for this request, or ``None``."""
        plan, _ = self._get_state()
        if plan.reason:
            return None
        return self._operation_match(get_path_info(environ))

    def _is_operation(self, view_class):
        from openai_django.views import AsyncOperationView, OperationView

        return (isinstance(view_class, type) and issubclass(view_class, OperationView)
                and not issubclass(view_class, AsyncOperationView))

    @staticmethod
    def _view(request):
        match = request.resolver_match
        return match.func(request, *match.args, **match.kwargs)

    def __call__(self, environ, start_response):
        match = self.lean_match(environ)
        if match is None:
            return self.application(environ, start_response)
        # Django's WSGIHandler.__call__ and get_response, with the lean chain.
        set_script_prefix(get_script_name(environ))
        signals.request_started.send(sender=self.__class__, environ=environ)
        request = self.request_class(environ)
        request.resolver_match = match
        _, chain = self._get_state()
        response = chain(request)
        response._resource_closers.append(request.close)
        response._handler_class = self.__class__
        status = f"{response.status_code} {response.reason_phrase}"
        # response.items() is a Mapping view of ResponseHeaders (an iterator and a
        # case-insensitive lookup a header): its stored (name, value) pairs are the same list.
        stored = response.headers
        headers = [*(stored._store.values() if type(stored) is ResponseHeaders
                     else response.items()),
                   *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())]
        start_response(status, headers)
        if getattr(response, "file_to_stream", None) is not None and environ.get(
                "wsgi.file_wrapper"):
            response.file_to_stream.close = response.close
            response = environ["wsgi.file_wrapper"](response.file_to_stream,
                                                    response.block_size)
        return response


__all__ = ["GatewayWSGI", "get_wsgi_application"]
