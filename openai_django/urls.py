"""The gateway's URLs: every path of both specs under ``v1/``, built from the registry, and
any other path under ``v1/`` to the passthrough view.

Include them with ``path("", include("openai_django.urls"))`` (or under a prefix of the site's
choosing: clients then use ``https://site/<prefix>/v1`` as their base URL).
"""

import asyncio

from django.db import transaction
from django.urls import URLPattern, URLResolver, path, re_path
from django.urls.exceptions import Resolver404
from django.urls.resolvers import RoutePattern

from openai_django import metrics, views
from openai_django.conf import app_settings
from openai_django.spec import get_registry

app_name = "openai_django"


def _view(view_class, **initkwargs):
    # The record must be committed before the upstream is asked and survive a failure, so the
    # gateway's views never run inside ATOMIC_REQUESTS' per-request transaction.
    return transaction.non_atomic_requests(view_class.as_view(**initkwargs))


def serves_async():
    """Whether this process serves the operations with the async views: ``TRANSPORT`` says,
    and "auto" answers by where this URLconf is loaded, on an event loop (an ASGI server's
    first request) or not (WSGI, management commands, tests)."""
    mode = app_settings.TRANSPORT
    if mode != "auto":
        return mode == "async"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


ASYNC = serves_async()
OPERATION_VIEW = views.AsyncOperationView if ASYNC else views.OperationView
PASSTHROUGH_VIEW = views.AsyncPassthroughView if ASYNC else views.PassthroughView


def _operation_patterns():
    patterns = []
    for operations in get_registry().by_path().values():
        view = _view(OPERATION_VIEW, operations=operations)
        route = "v1/" + next(iter(operations.values())).route
        # One pattern per operation, all to the same view, so reverse() works by operationId;
        # the first one resolves every method of the path.
        for operation in operations.values():
            patterns.append(path(route, view, name=operation.id))
    return patterns


_routes = [
    path("v1/openapi.yaml", _view(views.SpecView), name="spec"),
    path("v1/openapi-2.3.0.yaml", _view(views.SpecView, version="2.3.0"), name="spec-2.3.0"),
    path("v1/calls", _view(views.CallListView), name="call-list"),
    path("v1/calls/<str:call_id>", _view(views.CallDetailView), name="call-detail"),
    path("v1/calls/<str:call_id>/response", _view(views.CallResponseView),
         name="call-response"),
    path("v1/calls/<str:call_id>/cancel", _view(views.CallCancelView), name="call-cancel"),
    path("v1/calls/<str:call_id>/feedback", _view(views.CallFeedbackView),
         name="call-feedback"),
    path("v1/calls/<str:call_id>/artifacts/<str:artifact_id>", _view(views.ArtifactContentView),
         name="call-artifact"),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus; off unless METRICS
    *_operation_patterns(),
    re_path(r"^v1/", _view(PASSTHROUGH_VIEW), name="passthrough"),
]


def _index_view(request):  # pragma: no cover - _Index never resolves to itself
    raise Resolver404({"tried": [], "path": request.path_info})


class _Index(URLPattern):
    """Resolves a path against only the routes that could match it.

    Django's resolver tries the patterns one by one, and the gateway has one per operation
    of both specs (302 here): resolving ``/v1/chat/completions`` took 31-35 µs of CPU, a
    vector store file 117-131 µs; through the index 16-19 µs for either (the site's own
    patterns before ``include`` included; ``django.urls.resolve``, 5,000 runs, 2026-12-01).
    Routes with a ``<str:...>`` parameter match one path segment, so a path can only match
    the routes with as many segments and the same first two segments: those are tried, in
    the order of the list, with the regex routes (the passthrough) among them. The answer is
    the same ``ResolverMatch`` the list gives; the list itself stays (in
    :class:`_ReverseOnly`) for ``reverse()`` and the system checks.
    """

    def __init__(self, routes):
        super().__init__(RoutePattern("v1/-index-", is_endpoint=True), _index_view)
        self.buckets = {}
        self.always = []  # (position, pattern): regex routes, and <path:...> routes
        for position, route in enumerate(routes):
            text = str(route.pattern)
            key = self._key(text)
            if (not isinstance(route.pattern, RoutePattern) or "<path:" in text
                    or any(part.startswith("<") for part in key[1:] if part)):
                self.always.append((position, route))
                continue
            self.buckets.setdefault(key, []).append((position, route))
        for key, bucket in self.buckets.items():
            self.buckets[key] = [route for _, route in sorted(bucket + self.always,
                                                              key=lambda x: x[0])]
        self.always = [route for _, route in self.always]

    @staticmethod
    def _key(path):
        """The number of segments and the first two of them."""
        parts = path.split("/", 2)
        return (path.count("/") + 1, parts[0], parts[1] if len(parts) > 1 else None)

    def resolve(self, path):
        for route in self.buckets.get(self._key(path), self.always):
            match = route.resolve(path)
            if match:
                return match
        return None


class _ReverseOnly(URLResolver):
    """The routes, kept for ``reverse()`` and the system checks; :class:`_Index` resolves."""

    def resolve(self, path):
        raise Resolver404({"tried": [], "path": path})


urlpatterns = [_Index(_routes), _ReverseOnly(RoutePattern(""), _routes)]
