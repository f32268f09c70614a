"""Tags, sessions and feedback in the admin: list filters, the list's tags column, the call
page's labels and feedback, and the session page (a session's calls in order, read as a
conversation where the kind allows)."""

from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from openai_django import kinds, tagging
from openai_django.admin.filters import InputFilter
from openai_django.errors import InvalidRequest

SESSION_CALLS_MAX = 500  # calls shown on a session page (oldest first)
TAGS_SHOWN = 4  # tags shown in a list row (the rest in the title)
# What the session page does not read (it shows the request, the answer and the error).
SESSION_DEFERRED = ("stream_events", "payload", "response_text", "request_headers",
                    "response_headers", "attempts", "metadata")


class TagFilter(InputFilter):
    """Calls with a tag (or several, comma-separated: all of them), through the tag index."""

    title = _("tag")
    parameter_name = "tag"
    placeholder = _("tag, or tags a,b")

    def _tags(self):
        try:
            return tagging.parse_tags(self.value() or "", param="tag")
        except InvalidRequest:
            return None

    def describe(self):
        if self.value() and self._tags() is None:
            return _("not a valid tag")
        return ""

    def queryset(self, request, queryset):
        tags = self._tags()
        if tags is None:
            return queryset.none()
        return tagging.with_tags(queryset, tags) if tags else queryset


class SessionFilter(InputFilter):
    title = _("session")
    parameter_name = "session"
    placeholder = _("session id")

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(session=value) if value else queryset


class FeedbackFilter(admin.SimpleListFilter):
    title = _("feedback")
    parameter_name = "feedback"

    def lookups(self, request, model_admin):
        return [
            ("yes", _("Has feedback")),
            ("no", _("No feedback")),
            ("positive", _("Positive (score > 0)")),
            ("neutral", _("Neutral (score = 0)")),
            ("negative", _("Negative (score < 0)")),
            ("comment", _("With a comment")),
        ]

    def queryset(self, request, queryset):
        from openai_django.models import CallFeedback

        value = self.value()
        given = CallFeedback.objects.all()
        condition = {
            "yes": Q(), "positive": Q(score__gt=0), "neutral": Q(score=0),
            "negative": Q(score__lt=0), "comment": ~Q(comment=""),
        }
        if value == "no":
            return queryset.exclude(pk__in=given.values("call_id"))
        if value in condition:
            # Feedback is rare beside calls: its ids come from its own small table.
            return queryset.filter(pk__in=given.filter(condition[value]).values("call_id"))
        return queryset


def tags_cell(call, changelist_url):
    """The list's tags column: each tag a link to the calls with it."""
    tags = list(call.tags or ())
    if not tags:
        return mark_safe("<span></span>")
    shown = format_html_join(
        " ", '<a class="od-tag" href="{}?{}">{}</a>',
        ((changelist_url, urlencode({"tag": tag}), tag) for tag in tags[:TAGS_SHOWN]))
    if len(tags) > TAGS_SHOWN:
        shown = format_html('{} <span class="od-muted" title="{}">+{}</span>', shown,
                            ", ".join(tags[TAGS_SHOWN:]), len(tags) - TAGS_SHOWN)
    return shown


def user_turn(call, kind):
    """What the user said in this call, in full where the kind knows where to look."""
    body = call.request_body if isinstance(call.request_body, dict) else None
    if body is not None and kind.name == "chat":
        messages = body.get("messages")
        for message in reversed(messages if isinstance(messages, list) else ()):
            if isinstance(message, dict) and message.get("role") == "user":
                return kinds._text(message.get("content"))
    if body is not None and kind.name == "responses":
        value = body.get("input")
        if isinstance(value, str):
            return value
        for item in reversed(value if isinstance(value, list) else ()):
            if isinstance(item, dict) and item.get("role", "user") == "user" \
                    and item.get("type", "message") == "message":
                return kinds._text(item.get("content"))
    return (kind.prompt(body) if body is not None else "") or call.prompt_preview


def session_turns(calls):
    turns = []
    for call in calls:
        kind = kinds.of_call(call)
        output = call.output_text
        if not output and isinstance(call.response_body, dict):
            output = kind.output_text(call.response_body)
        turns.append({
            "call": call, "kind": kind.name, "kind_label": kind.label,
            "conversational": kind.name in ("chat", "responses", "completion", "edit"),
            "prompt": {"role": "user", "parts": [{"type": "text", "text": text}]}
            if (text := user_turn(call, kind)) else None,
            "output": {"role": "assistant", "parts": [{"type": "text", "text": output}]}
            if output else None,
        })
    return turns


class TaggingMixin:
    """The session page, and what the call page shows of tags, metadata and feedback."""

    def tagging_urls(self):
        from django.urls import path

        return [path("session/<path:session>/", self.admin_site.admin_view(self.session_view),
                     name=f"{self._info}_session")]

    def tag_usage(self, start, end):
        """The usage dashboard's "per tag" rows (see :func:`tag_usage`)."""
        return tag_usage(start, end)

    def get_ordering(self, request):
        """Newest first, as always; with a tag filter by the call id read from the tag's
        index (the same order: ids are time-ordered), so that a page of a common tag's calls
        reads a page of index rows instead of sorting all of them."""
        value = request.GET.get(TagFilter.parameter_name)
        if value:
            try:
                if tagging.parse_tags(value, param="tag"):
                    return (tagging.TAG_ORDER,)
            except InvalidRequest:
                pass
        return super().get_ordering(request)

    @admin.display(description=_("tags"))
    def tags_display(self, call):
        return tags_cell(call, reverse(self.url_name("changelist")))

    def tagging_context(self, request, call):
        changelist = reverse(self.url_name("changelist"))
        return {
            "call_tags": [{"tag": t, "url": f"{changelist}?{urlencode({'tag': t})}"}
                          for t in call.tags or ()],
            "call_metadata": sorted((call.metadata or {}).items()),
            "session_url": reverse(self.url_name("session"), args=[call.session])
            if call.session else "",
            "feedback": tagging.feedback_of(call),
        }

    def session_view(self, request, session):
        from django.core.exceptions import PermissionDenied
        from django.http import Http404

        if not self.has_view_permission(request):
            raise PermissionDenied
        found = list(tagging.session_calls(session, self.get_queryset(request))
                     .select_related("feedback")
                     .defer(*SESSION_DEFERRED)[:SESSION_CALLS_MAX + 1])
        if not found:
            raise Http404(_("No calls in session %s.") % session)
        calls = found[:SESSION_CALLS_MAX]
        total_cost = sum((c.cost_usd for c in calls if c.cost_usd is not None), start=0)
        total_tokens = sum(c.total_tokens or 0 for c in calls)
        users = sorted({c.user.get_username() for c in calls if c.user is not None})
        return self.render_page(request, "session.html", self.page_context(
            request, None, title=_("Session %s") % session, session=session,
            turns=session_turns(calls), more=len(found) > SESSION_CALLS_MAX,
            limit=SESSION_CALLS_MAX, total_cost=total_cost, total_tokens=total_tokens,
            users=users, first=calls[0].created, last=calls[-1].created,
            list_url=reverse(self.url_name("changelist")) + "?" + urlencode(
                {"session": session}),
        ))


def tag_usage(start, end, using="default", top=25):
    """The usage dashboard's "per tag" rows for the days ``start``..``end`` (inclusive), the
    costliest first. Like the rest of the dashboard, days that can no longer change (before
    yesterday) are kept in the cache, under the dashboard's own generation (so recomputed
    costs are seen at once)."""
    import datetime
    from decimal import Decimal

    from django.core.cache import cache
    from django.utils import timezone

    from openai_django.admin.formatting import format_cost
    from openai_django.admin.usage import CACHE_SECONDS, _as_date, _cache_key

    days = [start + datetime.timedelta(days=i) for i in range((end - start).days + 1)]
    cacheable_before = timezone.localdate() - datetime.timedelta(days=1)
    keys = {day: _cache_key(day, using) + ":tags" for day in days if day < cacheable_before}
    found = cache.get_many(list(keys.values())) if keys else {}
    per_day = {day: found[keys[day]] for day in days if day in keys and keys[day] in found}
    missing = [day for day in days if day not in per_day]
    if missing:
        tz = timezone.get_current_timezone()
        low = datetime.datetime.combine(missing[0], datetime.time.min, tzinfo=tz)
        high = datetime.datetime.combine(missing[-1] + datetime.timedelta(days=1),
                                         datetime.time.min, tzinfo=tz)
        fresh = {day: {} for day in missing}
        for (day, tag), sums in tagging.spend_per_day_and_tag(low, high, using).items():
            day = _as_date(day)
            if day in fresh:
                fresh[day][tag] = sums
        cache.set_many({keys[day]: fresh[day] for day in missing if day in keys},
                       CACHE_SECONDS)
        per_day.update(fresh)
    totals = {}
    for sums_by_tag in per_day.values():
        for tag, sums in sums_by_tag.items():
            into = totals.setdefault(tag, {"tag": tag, "calls": 0, "tokens": 0,
                                           "cost": Decimal(0)})
            into["calls"] += sums["calls"]
            into["tokens"] += sums["tokens"] or 0
            into["cost"] += Decimal(str(sums["cost"] or 0))
    rows = sorted(totals.values(), key=lambda r: (-r["cost"], -r["calls"], r["tag"]))[:top]
    priced = any(r["cost"] for r in rows)
    high_mark = max((float(r["cost"]) if priced else r["calls"] for r in rows), default=0) or 1
    for r in rows:
        r["cost_display"] = format_cost(r["cost"]) if r["cost"] else "$0"
        value = float(r["cost"]) if priced else r["calls"]
        r["share"] = f"{value / high_mark * 100:.1f}"
    return rows
