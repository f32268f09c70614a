"""Template tags of the call admin: a date drill-down and a pager that never scan the table."""

import datetime

from django import template
from django.contrib.admin.templatetags.admin_list import pagination
from django.template.defaultfilters import filesizeformat
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from openai_django.admin.formatting import format_cost, format_ms

register = template.Library()


def _bounds(queryset, field):
    """First and last value of ``field``: two index seeks, where Django's date hierarchy runs
    ``MIN()`` and ``MAX()`` in one query (a full index scan on SQLite) and then a
    ``SELECT DISTINCT`` of truncated dates over every row in range."""
    ordered = queryset.order_by().values_list(field, flat=True)
    first = ordered.order_by(field).first()
    last = ordered.order_by(f"-{field}").first()
    if first is None or last is None:
        return None, None
    return timezone.localtime(first), timezone.localtime(last)


def _months(first, last):
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        yield datetime.date(year, month, 1)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


@register.inclusion_tag("admin/date_hierarchy.html")
def fast_date_hierarchy(cl):
    """Django's date drill-down (years, months, days) with links computed from the first and
    last date in the list: the periods between them are offered without counting rows."""
    field = cl.date_hierarchy
    year_field, month_field, day_field = (f"{field}__year", f"{field}__month", f"{field}__day")
    year, month, day = (cl.params.get(year_field), cl.params.get(month_field),
                        cl.params.get(day_field))
    year = year[-1] if isinstance(year, list) else year
    month = month[-1] if isinstance(month, list) else month
    day = day[-1] if isinstance(day, list) else day

    def link(filters):
        return cl.get_query_string(filters, [f"{field}__"])

    first = last = None
    complete = getattr(getattr(cl, "paginator", None), "complete_rows", None)
    if complete is not None and not complete and not (year or month or day):
        return {"show": False}
    if complete:
        # Every matching row is on the page: their dates are the span (no scan from each end).
        dates = [timezone.localtime(getattr(row, field)) for row in complete]
        first, last = min(dates), max(dates)
    if not (year or month or day):
        if first is None:
            first, last = _bounds(cl.queryset, field)
        if first is None:
            return {"show": False}
        if first.year == last.year:
            year = first.year
            if first.month == last.month:
                month = first.month
    if year and month and day:
        date = datetime.date(int(year), int(month), int(day))
        return {"show": True,
                "back": {"link": link({year_field: year, month_field: month}),
                         "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT"))},
                "choices": [{"title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT"))}]}
    if first is None:
        first, last = _bounds(cl.queryset, field)
        if first is None:
            return {"show": True, "back": {"link": link({}), "title": _("All dates")},
                    "choices": []}
    if year and month:
        days = [first.date() + datetime.timedelta(days=i)
                for i in range((last.date() - first.date()).days + 1)]
        return {"show": True, "back": {"link": link({year_field: year}), "title": str(year)},
                "choices": [{"link": link({year_field: year, month_field: month,
                                           day_field: d.day}),
                             "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT"))}
                            for d in days]}
    if year:
        return {"show": True, "back": {"link": link({}), "title": _("All dates")},
                "choices": [{"link": link({year_field: year, month_field: m.month}),
                             "title": capfirst(formats.date_format(m, "YEAR_MONTH_FORMAT"))}
                            for m in _months(first, last)]}
    return {"show": True, "back": None,
            "choices": [{"link": link({year_field: str(y)}), "title": str(y)}
                        for y in range(first.year, last.year + 1)]}


@register.inclusion_tag("openai_django/admin/pagination.html")
def capped_pagination(cl):
    """Django's page links, with the count said honestly: "10,000+" or "about 1,000,000"."""
    context = pagination(cl)
    paginator = cl.paginator
    context["capped"] = getattr(paginator, "capped", False)
    context["estimate"] = getattr(paginator, "estimate", None)
    return context


@register.filter
def ms(value):
    return format_ms(value)


@register.filter
def usd(value):
    return format_cost(value)


@register.filter
def size(value):
    return filesizeformat(value or 0)


@register.filter
def get(mapping, key):
    try:
        return mapping[key]
    except (KeyError, IndexError, TypeError):
        return ""


@register.filter
def thousands(value):
    """``1234567`` -> ``1,234,567`` (without needing django.contrib.humanize installed)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return value
