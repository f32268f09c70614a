"""Budgets and rate limits in the admin: an inline on the API key, user and group pages, the
spend of this period on each, a list of every allowance, and the usage dashboard's table.

The site's own ``UserAdmin`` and ``GroupAdmin`` (Django's, or a site's subclass) are extended,
not replaced: :func:`extend_user_admins` re-registers a subclass of whatever admin is
registered for the user model and ``Group`` with :class:`UserAllowanceInline` /
:class:`GroupAllowanceInline` appended to its inlines. A site whose user admin is registered
after openai-django's admin was loaded (or that builds its own) adds the inline itself::

    from openai_django.admin import UserAllowanceInline

    class MyUserAdmin(UserAdmin):
        inlines = [*UserAdmin.inlines, UserAllowanceInline]
"""

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from openai_django import budgets
from openai_django.models import Allowance, BudgetWindow

RATE_FIELDS = ("requests_per_minute", "tokens_per_minute")
BUDGET_FIELDS = ("daily_usd", "daily_tokens", "monthly_usd", "monthly_tokens", "total_usd",
                 "total_tokens")
PERIOD_LABELS = {"daily": _("today"), "monthly": _("this month"), "total": _("in total")}


def _usd(value):
    return f"${value:,.4f}"


def _figure(row):
    parts = []
    if row["limit_usd"] is not None:
        parts.append(f"{_usd(row['spent_usd'])} of {_usd(row['limit_usd'])}")
    if row["limit_tokens"] is not None:
        parts.append(f"{row['spent_tokens']:,} of {row['limit_tokens']:,} tokens")
    return " · ".join(parts)


def render_state(rows):
    """An HTML table of :func:`openai_django.budgets.state` rows (spend against limit)."""
    if not rows:
        return _("No budget.")
    lines = []
    for row in rows:
        reserved = ""
        if row["reserved_usd"] or row["reserved_tokens"]:
            reserved = f" (+{_usd(row['reserved_usd'])} / {row['reserved_tokens']:,} tokens " \
                       f"in flight)"
        lines.append((PERIOD_LABELS[row["period"]], _figure(row) + reserved, row["calls"],
                      "od-bar od-bar-over" if row["over"] else "od-bar", row["share"]))
    body = format_html_join(
        "", '<tr><th>{}</th><td>{}</td><td class="num">{} calls</td><td><div '
            'class="od-bar-track" style="min-width:120px"><div class="{}" style="width: {}%">'
            '</div></div></td></tr>', lines)
    return format_html('<table class="od-table od-budget-state">{}</table>', body)


class AllowanceInline(admin.StackedInline):
    """The budgets and rate limits of the page's key, user or group (at most one)."""

    model = Allowance
    extra = 0
    max_num = 1
    can_delete = True
    verbose_name = _("budget and rate limits")
    verbose_name_plural = _("budget and rate limits")
    readonly_fields = ("this_period",)
    fieldsets = (
        (_("Rate limits"), {"fields": (RATE_FIELDS,),
                            "description": _("Per minute; empty = no limit.")}),
        (_("Budgets"), {"fields": (("daily_usd", "daily_tokens"),
                                   ("monthly_usd", "monthly_tokens"),
                                   ("total_usd", "total_tokens"), "this_period"),
                        "description": _("Dollars and/or tokens; empty = no budget. Calls "
                                         "over budget are refused (429 insufficient_quota).")}),
    )

    @admin.display(description=_("spent this period"))
    def this_period(self, allowance):
        if allowance is None or not allowance.pk:
            return "—"
        return render_state(budgets.state(allowance))


    #: The formset's prefix (the reverse accessor's name).
    prefix = "openai_allowance"

    @classmethod
    def posted_without(cls, request):
        """A POST of the page without this inline's forms (a script or an older form that
        only changes the parent): the inline is left out rather than failing the save."""
        return request.method == "POST" and f"{cls.prefix}-TOTAL_FORMS" not in request.POST


class KeyAllowanceInline(AllowanceInline):
    fk_name = "api_key"
    prefix = "allowance"


class UserAllowanceInline(AllowanceInline):
    fk_name = "user"


class GroupAllowanceInline(AllowanceInline):
    fk_name = "group"


def _inlines_of(base):
    """``get_inlines`` of an extended admin: the base's, without ours on a POST without it."""

    def get_inlines(self, request, obj):
        return [inline for inline in base.get_inlines(self, request, obj)
                if not (isinstance(inline, type) and issubclass(inline, AllowanceInline)
                        and inline.posted_without(request))]

    return get_inlines


def applicable_state(key):
    """``[(label, rows)]`` of every budget that applies to a key's calls: its own, its
    user's and its user's groups'."""
    from openai_django.controls import _label, allowances_for

    order = {"api_key": 0, "user": 1, "group": 2}
    found = allowances_for(key.user, key)
    found.sort(key=lambda a: order["api_key" if a.api_key_id else "user" if a.user_id
                                    else "group"])
    return [(_label(a), budgets.state(a)) for a in found if a.budgets()]


def key_budget_display(key):
    """The key page's "spend against budget this period" (every budget that applies)."""
    if key is None or not key.pk:
        return "—"
    sections = applicable_state(key)
    if not sections:
        return _("No budget applies to this key's calls.")
    return format_html_join("", "<div><strong>{}</strong>{}</div>",
                            ((label, render_state(rows)) for label, rows in sections))


class AllowanceAdmin(admin.ModelAdmin):
    list_display = ("subject_display", "requests_per_minute", "tokens_per_minute",
                    "budget_display", "updated")
    list_select_related = ("api_key", "user", "group")
    raw_id_fields = ("api_key", "user", "group")
    search_fields = ("user__username", "group__name", "api_key__name", "api_key__prefix")
    readonly_fields = ("this_period",)
    fieldsets = (
        (_("Whose"), {"fields": ("api_key", "user", "group"),
                      "description": _("Exactly one: a key, a user or a group.")}),
        *AllowanceInline.fieldsets,
    )

    @admin.display(description=_("subject"))
    def subject_display(self, allowance):
        from openai_django.controls import _label

        return _label(allowance)

    @admin.display(description=_("spent this period"))
    def budget_display(self, allowance):
        return render_state(budgets.state(allowance))

    this_period = AllowanceInline.this_period


def extend_user_admins(site):
    """Add the allowance inline to the admins registered for the user model and ``Group``
    (subclasses of the site's own, re-registered; idempotent)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    for model, inline in ((get_user_model(), UserAllowanceInline),
                          (Group, GroupAllowanceInline)):
        current = site._registry.get(model)
        if current is None:
            continue
        inlines = list(getattr(current, "inlines", None) or [])
        if any(isinstance(i, type) and issubclass(i, AllowanceInline) for i in inlines):
            continue
        cls = type(current)
        extended = type(cls.__name__, (cls,), {"inlines": [*inlines, inline],
                                               "get_inlines": _inlines_of(cls),
                                               "__module__": cls.__module__,
                                               "__doc__": cls.__doc__})
        site.unregister(model)
        site.register(model, extended)


def budget_rows(limit=50):
    """The usage dashboard's table: every budget's spend this period, fullest first."""
    day = budgets.today()
    starts = {"daily": day, "monthly": day.replace(day=1), "total": budgets.TOTAL_START}
    allowances = list(Allowance.objects.select_related("api_key", "user", "group").exclude(
        daily_usd=None, daily_tokens=None, monthly_usd=None, monthly_tokens=None,
        total_usd=None, total_tokens=None)[:500])
    windows = {}
    if allowances:
        for window in BudgetWindow.objects.filter(allowance__in=allowances,
                                                  start__in=set(starts.values())):
            if starts[window.period] == window.start:
                windows[(window.allowance_id, window.period)] = window
    from openai_django.controls import _label

    rows = []
    for allowance in allowances:
        for period, usd, tokens in allowance.budgets():
            window = windows.get((allowance.pk, period))
            row = {"label": _label(allowance), "period": period,
                   "period_label": PERIOD_LABELS[period], "start": starts[period],
                   "limit_usd": usd, "limit_tokens": tokens,
                   "spent_usd": window.spent_usd if window else 0,
                   "spent_tokens": window.spent_tokens if window else 0,
                   "calls": window.calls if window else 0, "allowance": allowance}
            shares = []
            if usd:
                shares.append(float(row["spent_usd"]) / float(usd) * 100)
            if tokens:
                shares.append(row["spent_tokens"] / tokens * 100)
            share = max(shares or [0.0])
            row.update(share=round(min(share, 100.0), 1), over=share >= 100,
                       figure=_figure(row))
            rows.append(row)
    rows.sort(key=lambda r: -r["share"])
    return rows[:limit]
