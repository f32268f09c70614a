"""The gateway's URLs: every path of both specs under ``v1/``, built from the registry, and
any other path under ``v1/`` to the passthrough view.

Include them with ``path("", include("openai_django.urls"))`` (or under a prefix of the site's
choosing: clients then use ``https://site/<prefix>/v1`` as their base URL).
"""

import asyncio

from django.db import transaction
from django.urls import path, re_path

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


urlpatterns = [
    path("v1/openapi.yaml", _view(views.SpecView), name="spec"),
    path("v1/openapi-2.3.0.yaml", _view(views.SpecView, version="2.3.0"), name="spec-2.3.0"),
    path("v1/calls", _view(views.CallListView), name="call-list"),
    path("v1/calls/<str:call_id>", _view(views.CallDetailView), name="call-detail"),
    path("v1/calls/<str:call_id>/response", _view(views.CallResponseView),
         name="call-response"),
    path("v1/calls/<str:call_id>/cancel", _view(views.CallCancelView), name="call-cancel"),
    path("v1/calls/<str:call_id>/artifacts/<str:artifact_id>", _view(views.ArtifactContentView),
         name="call-artifact"),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus; off unless METRICS
    *_operation_patterns(),
    re_path(r"^v1/", _view(PASSTHROUGH_VIEW), name="passthrough"),
]
