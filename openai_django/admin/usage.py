"""The usage dashboard: calls, tokens and estimated cost per day, model, user and key.

Two aggregate queries over the date range give every figure on the page: per day and model
(totals, the per-model table and the charts are summed from it in Python), and per day, user
and key (keys belong to one user, so the per-user table is summed from it). Both read only the
``od_call_usage`` index (date first, then every column they sum), never the wide rows. Days
that can no longer change are kept in Django's cache, so a dashboard over months reads only
the last two days again. The cost is the ``cost_usd`` stored on each call when it finished
(see :mod:`openai_django.pricing`).
Charts are inline SVG drawn here: the page loads nothing from anywhere else.
"""

import datetime
import logging
from decimal import Decimal
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connections
from django.db.models import Count, F, Func, Q, Sum
from django.db.models.functions import TruncDate
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from openai_django.admin.formatting import format_cost
from openai_django.models import APIKey, Call

logger = logging.getLogger("openai_django.admin")

USAGE_INDEX = "od_call_usage"
MICRO_USD = Decimal("0.000001")
DEFAULT_DAYS = 30
CACHE_PREFIX = "openai_django:usage"
CACHE_SECONDS = 6 * 3600
MAX_DAYS = 366 * 3
TOP = 25
SERIES_MODELS = 6
PALETTE = ["#417690", "#e0a030", "#5b9a5b", "#b5525c", "#8e6bb8", "#3aa7a3", "#999999"]
CHART_WIDTH, CHART_HEIGHT = 900, 180


class SQLiteDate(Func):
    """``date(created)`` with SQLite's built-in C function, for a UTC day: Django's
    ``TruncDate`` calls a Python function per row there, which costs seconds on a big range."""

    function = "date"
    output_field = None

    def __init__(self, expression, **extra):
        from django.db.models import DateField

        super().__init__(expression, output_field=DateField(), **extra)


def day_expression(using="default"):
    tz = timezone.get_current_timezone()
    utc = getattr(tz, "key", None) == "UTC" or tz in (datetime.timezone.utc,) \
        or str(tz) == "UTC"
    if connections[using].vendor == "sqlite" and utc:
        return SQLiteDate(F("created"))
    return TruncDate("created", tzinfo=tz)


class PeriodForm(forms.Form):
    start = forms.DateField(label=_("From"), required=False,
                            widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label=_("To (inclusive)"), required=False,
                          widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            raise forms.ValidationError(_("The start must not be after the end."))
        if start and end and (end - start).days > MAX_DAYS:
            raise forms.ValidationError(_("Choose at most %d days.") % MAX_DAYS)
        return cleaned


def period(form):
    today = timezone.localdate()
    start = end = None
    if form.is_valid():
        start, end = form.cleaned_data.get("start"), form.cleaned_data.get("end")
    end = end or today
    start = start or end - datetime.timedelta(days=DEFAULT_DAYS - 1)
    return start, end


def _as_date(value):
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, str):
        return datetime.date.fromisoformat(value[:10])
    return value


def _measures():
    return {
        # Columns of od_call_usage only (COUNT(id) would make PostgreSQL visit every row).
        "calls": Count("created"),
        "failed": Count("status", filter=Q(status=Call.Status.FAILED)),
        "prompt": Sum("prompt_tokens"),
        "completion": Sum("completion_tokens"),
        "tokens": Sum("total_tokens"),
        "cost": Sum("cost_usd"),
    }


def _zero():
    return {"calls": 0, "failed": 0, "prompt": 0, "completion": 0, "tokens": 0,
            "cost": Decimal(0)}


def _add(into, row):
    for key in ("calls", "failed", "prompt", "completion", "tokens"):
        into[key] += row.get(key) or 0
    into["cost"] += row.get("cost") or Decimal(0)


def bar_chart(days, series, values, fmt):
    """Stacked bars (one per day) as SVG rectangles: [{x, y, w, h, colour, title}]."""
    width_each = CHART_WIDTH / max(1, len(days))
    totals = [sum(values.get((day, name), 0) or 0 for name in series) for day in days]
    top = max(totals) if totals and max(totals) > 0 else 1
    bars, labels = [], []
    label_every = max(1, -(-len(days) // 12))
    for i, day in enumerate(days):
        y = CHART_HEIGHT
        for j, name in enumerate(series):
            value = values.get((day, name), 0) or 0
            if not value:
                continue
            height = float(value) / float(top) * (CHART_HEIGHT - 4)
            y -= height
            bars.append({
                "x": f"{i * width_each + 1:.1f}", "y": f"{y:.1f}",
                "w": f"{max(1.0, width_each - 2):.1f}", "h": f"{max(height, 0.5):.1f}",
                "colour": PALETTE[j % len(PALETTE)],
                "title": f"{day.isoformat()} · {name}: {fmt(value)}",
            })
        if i % label_every == 0:
            labels.append({"x": f"{i * width_each + width_each / 2:.1f}",
                           "text": day.strftime("%d %b") if len(days) > 1 else day.isoformat()})
    return {"bars": bars, "labels": labels, "max": fmt(top), "width": CHART_WIDTH,
            "height": CHART_HEIGHT}


def _fmt_int(value):
    return f"{int(value):,}"


def _fmt_cost(value):
    return format_cost(Decimal(value)) if value else "$0"


def _measure_values(row):
    values = {key: row.get(key) or 0
              for key in ("calls", "failed", "prompt", "completion", "tokens")}
    cost = row.get("cost") or 0
    values["cost"] = cost if isinstance(cost, Decimal) else \
        Decimal(str(cost)).quantize(MICRO_USD)
    return values


def _grouped(queryset, using):
    """The rows of an aggregate ``queryset`` as dicts. On SQLite the query names the covering
    index: with its statistics SQLite prefers a skip-scan of ``od_call_model_created`` or
    ``od_call_user_created``, which reads every row and is three times slower."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        yield from queryset
        return
    sql, params = queryset.query.sql_with_params()
    quote = connection.ops.quote_name
    table = quote(Call._meta.db_table)
    hinted = sql.replace(f"FROM {table}", f"FROM {table} INDEXED BY {quote(USAGE_INDEX)}", 1)
    try:
        with connection.cursor() as cursor:
            cursor.execute(hinted, params)
            names = [column[0] for column in cursor.description]
            rows = cursor.fetchall()
    except DatabaseError:  # the index is missing (migration not applied): let SQLite choose
        logger.warning("Index %s not found; the usage dashboard reads the rows", USAGE_INDEX)
        yield from queryset
        return
    for row in rows:
        yield dict(zip(names, row))


def _query_days(first, last, using):
    """``{day: {"models": {model: sums}, "keys": {(user, key): sums}}}`` for the days
    ``first``..``last``, read with two aggregate queries over ``od_call_usage``."""
    tz = timezone.get_current_timezone()
    low = datetime.datetime.combine(first, datetime.time.min, tzinfo=tz)
    high = datetime.datetime.combine(last + datetime.timedelta(days=1), datetime.time.min,
                                     tzinfo=tz)
    calls = (Call.objects.using(using).filter(created__gte=low, created__lt=high).order_by()
             .annotate(day=day_expression(using)))
    days = {first + datetime.timedelta(days=i): {"models": {}, "keys": {}}
            for i in range((last - first).days + 1)}
    for row in _grouped(calls.values("day", "model").annotate(**_measures()), using):
        day = days.get(_as_date(row["day"]))
        if day is not None:
            day["models"][row["model"] or ""] = _measure_values(row)
    for row in _grouped(calls.values("day", "user", "api_key").annotate(**_measures()), using):
        day = days.get(_as_date(row["day"]))
        if day is not None:
            day["keys"][(row["user"], row["api_key"])] = _measure_values(row)
    return days


def _cache_key(day, using):
    generation = cache.get_or_set(f"{CACHE_PREFIX}:generation", 1, None)
    return (f"{CACHE_PREFIX}:{generation}:{using}:{timezone.get_current_timezone_name()}:"
            f"{day.isoformat()}")


def forget_cached_usage():
    """Drop every cached day (after costs were recomputed, say)."""
    key = f"{CACHE_PREFIX}:generation"
    try:
        cache.incr(key)
    except ValueError:
        cache.set(key, 2, None)


def day_groups(start, end, using="default"):
    """The per-day groups of ``start``..``end``. Days that ended before yesterday no longer
    change (a call counts on the day it was created, and none runs for a day), so they are kept
    in the cache for ``CACHE_SECONDS``; the others are always read from the database."""
    cacheable_before = timezone.localdate() - datetime.timedelta(days=1)
    days = [start + datetime.timedelta(days=i) for i in range((end - start).days + 1)]
    keys = {day: _cache_key(day, using) for day in days if day < cacheable_before}
    found = cache.get_many(list(keys.values())) if keys else {}
    groups = {day: found[keys[day]] for day in days if day in keys and keys[day] in found}
    missing = [day for day in days if day not in groups]
    if missing:
        fresh = _query_days(missing[0], missing[-1], using)
        cache.set_many({keys[day]: fresh[day] for day in missing if day in keys},
                       CACHE_SECONDS)
        groups.update({day: fresh[day] for day in missing})
    return groups


def usage_data(start, end, using="default"):
    """Every figure of the dashboard for the days ``start``..``end`` (inclusive)."""
    groups = day_groups(start, end, using)
    users_total, keys_total, models, totals = {}, {}, {}, _zero()
    per_day_model = []
    for day, group in groups.items():
        for model, values in group["models"].items():
            per_day_model.append({"day": day, "model": model, **values})
            _add(totals, values)
            _add(models.setdefault(model, _zero()), values)
        for (user, key), values in group["keys"].items():
            _add(users_total.setdefault(user, _zero()), values)
            _add(keys_total.setdefault(key, _zero()), values)

    def top(totals_by, name):
        rows = [{name: key, **values} for key, values in totals_by.items()]
        rows.sort(key=lambda r: (-r["cost"], -r["calls"]))
        return rows[:TOP]

    per_user, per_key = top(users_total, "user"), top(keys_total, "api_key")
    by_model = sorted(({"model": name, **values} for name, values in models.items()),
                      key=lambda r: (-r["cost"], -r["calls"]))

    # Per-day series, stacked by the models that cost (or are called) most.
    series = [r["model"] or "—" for r in by_model[:SERIES_MODELS]]
    others = len(by_model) > SERIES_MODELS
    if others:
        series.append(str(_("other models")))
    top_names = {r["model"] for r in by_model[:SERIES_MODELS]}
    days = [start + datetime.timedelta(days=i) for i in range((end - start).days + 1)]
    values = {"calls": {}, "tokens": {}, "cost": {}}
    per_day = {day: _zero() for day in days}
    for row in per_day_model:
        name = (row["model"] or "—") if row["model"] in top_names else str(_("other models"))
        key = (row["day"], name)
        for measure, series_values in values.items():
            series_values[key] = series_values.get(key, 0) + (row.get(measure) or 0)
        if row["day"] in per_day:
            _add(per_day[row["day"]], row)

    users = {u.pk: u for u in get_user_model()._default_manager.filter(
        pk__in=[r["user"] for r in per_user if r["user"] is not None])}
    keys = {k.pk: k for k in APIKey.objects.filter(
        pk__in=[r["api_key"] for r in per_key if r["api_key"] is not None])}
    for row in per_user:
        user = users.get(row["user"])
        row["label"] = user.get_username() if user is not None else _("(no user)")
    for row in per_key:
        key = keys.get(row["api_key"])
        row["label"] = str(key) if key is not None else _("(no key)")
        row["revoked"] = key is not None and key.revoked_at is not None

    for rows in (by_model, per_user, per_key):
        top_cost = max((r["cost"] or 0 for r in rows), default=0) or 1
        priced = any(r["cost"] for r in rows)
        top_calls = max((r["calls"] for r in rows), default=0) or 1
        for r in rows:
            r["cost"] = r["cost"] or Decimal(0)
            r["cost_display"] = _fmt_cost(r["cost"])
            # Bars show the share of cost; by calls when nothing in the table has a price.
            r["share"] = (f"{float(r['cost']) / float(top_cost) * 100:.1f}" if priced
                          else f"{r['calls'] / top_calls * 100:.1f}")

    return {
        "start": start, "end": end, "days": days,
        "totals": {**totals, "cost_display": _fmt_cost(totals["cost"])},
        "by_model": by_model, "by_user": per_user, "by_key": per_key,
        "per_day": [{"day": d, **per_day[d], "cost_display": _fmt_cost(per_day[d]["cost"])}
                    for d in reversed(days)],
        "series": [{"name": n, "colour": PALETTE[i % len(PALETTE)]}
                   for i, n in enumerate(series)],
        "charts": [
            {"title": _("Calls per day"), **bar_chart(days, series, values["calls"], _fmt_int)},
            {"title": _("Tokens per day"),
             **bar_chart(days, series, values["tokens"], _fmt_int)},
            {"title": _("Estimated cost per day"),
             **bar_chart(days, series, values["cost"], _fmt_cost)},
        ],
    }


class UsageMixin:
    def usage_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = PeriodForm(request.GET or None)
        start, end = period(form)
        data = usage_data(start, end)
        changelist = reverse(self.url_name("changelist"))
        # Links from each row to the calls it counts (the date hierarchy's range lookups).
        tz = timezone.get_current_timezone()
        range_query = urlencode({
            "created__gte": datetime.datetime.combine(start, datetime.time.min,
                                                      tzinfo=tz).isoformat(),
            "created__lt": datetime.datetime.combine(end + datetime.timedelta(days=1),
                                                     datetime.time.min, tzinfo=tz).isoformat(),
        })
        today = timezone.localdate()
        quick = [(label, (today - datetime.timedelta(days=n - 1)).isoformat(), today.isoformat())
                 for label, n in ((_("Today"), 1), (_("7 days"), 7), (_("30 days"), 30),
                                  (_("90 days"), 90), (_("365 days"), 365))]
        return self.render_page(request, "usage.html", self.page_context(
            request, None, title=_("Usage"), form=form, data=data,
            changelist_url=changelist, range_query=range_query, quick=quick,
            timezone_name=str(timezone.get_current_timezone()),
            price_note=_price_note(),
            by_tag=self.tag_usage(start, end),  # TaggingMixin (admin/tagging.py)
            budget_rows=_budget_rows(),
        ))


def _budget_rows():
    from .allowances import budget_rows

    return budget_rows()


def _price_note():
    from openai_django.conf import app_settings

    return bool(app_settings.PRICES)

