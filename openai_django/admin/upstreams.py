"""The admin's upstreams page: each configured upstream, its circuit's state and its calls.

``/admin/openai_django/call/upstreams/``: name, kind, base URL, models, proxy; the circuit
breaker's state read from its store now (closed, open until when, half-open; failures in a
row, times opened, the last error); and the last 24 hours of calls each one answered (calls,
failed, answered after a fallback, mean latency). A user with ``change_upstreamhealth`` (a
superuser) can close an open circuit by hand (a POST, as the breaker's own success would).
"""

import datetime

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Avg, Count, Q
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from openai_django.models import Call

WINDOW = datetime.timedelta(hours=24)


def traffic(since):
    """``{upstream: {"calls", "failed", "fallbacks", "latency"}}`` of calls since ``since``."""
    rows = (Call.objects.filter(created__gte=since).exclude(upstream="")
            .values("upstream").order_by()
            .annotate(calls=Count("id"), failed=Count("id", filter=Q(status="failed")),
                      fallbacks=Count("id", filter=Q(upstream_attempts__isnull=False)),
                      latency=Avg("latency_ms")))
    return {row.pop("upstream"): row for row in rows}


def _may_close(request):
    return request.user.has_perm("openai_django.change_upstreamhealth")


class UpstreamsMixin:
    def upstreams_view(self, request):
        from openai_django import upstreams
        from openai_django.breaker import breaker

        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not _may_close(request):
                raise PermissionDenied
            name = request.POST.get("close", "")
            if name in upstreams.config().upstreams:
                breaker.success(name)
                messages.success(request, _("The circuit of %s is closed.") % name)
            return HttpResponseRedirect(reverse(self.url_name("upstreams")))
        rows = upstreams.describe()
        seen = traffic(timezone.now() - WINDOW)
        for row in rows:
            row["traffic"] = seen.pop(row["name"], None)
        return self.render_page(request, "upstreams.html", self.page_context(
            request, None, title=_("Upstreams"), rows=rows,
            gone=sorted(seen.items()),  # calls of upstreams no longer configured
            can_close=_may_close(request),
            single=upstreams.config().single))


class UpstreamFilter(admin.SimpleListFilter):
    """The call list by the upstream that answered (the configured ones: no query to list
    them), and "after a fallback"."""

    title = _("upstream")
    parameter_name = "upstream"

    def lookups(self, request, model_admin):
        from openai_django import upstreams

        cfg = upstreams.config()
        if cfg.single:
            return ()
        return [*((name, name) for name in cfg.upstreams),
                ("~fallback", _("after a fallback"))]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "~fallback":
            return queryset.filter(upstream_attempts__isnull=False)
        if value:
            return queryset.filter(upstream=value)
        return queryset
