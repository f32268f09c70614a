"""The models of budgets and rate limits (imported by :mod:`openai_django.models`).

An :class:`Allowance` belongs to exactly one API key, one user or one Django group and holds
that subject's rate limits (requests and tokens per minute) and budgets (dollars and/or tokens
per day, per month, in total). Every allowance that applies to a call must let it through:
its key's, its user's and each of its user's groups'.

What a budget has consumed lives in :class:`BudgetWindow` rows (one per allowance, period and
day/month), with what calls in flight have reserved (:class:`BudgetReservation`, one row per
call and window, deleted when the call is charged). :class:`RateWindow` rows are the counters
of the database backend of rate limits (the Redis backend keeps them in Redis).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

USD = {"max_digits": 14, "decimal_places": 6}


class Allowance(models.Model):
    """Rate limits and budgets of one API key, one user or one group (empty = no limit)."""

    api_key = models.OneToOneField(
        "openai_django.APIKey", null=True, blank=True, on_delete=models.CASCADE,
        related_name="allowance", verbose_name=_("API key"))
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="openai_allowance", verbose_name=_("user"))
    group = models.OneToOneField(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE,
        related_name="openai_allowance", verbose_name=_("group"),
        help_text=_("Shared by all the group's members together."))

    requests_per_minute = models.PositiveIntegerField(
        _("requests per minute"), null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(
        _("tokens per minute"), null=True, blank=True,
        help_text=_("Counted from an estimate before the call, corrected by its real usage."))
    daily_usd = models.DecimalField(_("daily budget (USD)"), null=True, blank=True, **USD)
    daily_tokens = models.PositiveBigIntegerField(_("daily budget (tokens)"), null=True,
                                                  blank=True)
    monthly_usd = models.DecimalField(_("monthly budget (USD)"), null=True, blank=True, **USD)
    monthly_tokens = models.PositiveBigIntegerField(_("monthly budget (tokens)"), null=True,
                                                    blank=True)
    total_usd = models.DecimalField(_("total budget (USD)"), null=True, blank=True, **USD)
    total_tokens = models.PositiveBigIntegerField(_("total budget (tokens)"), null=True,
                                                  blank=True)
    updated = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("budget and rate limits")
        verbose_name_plural = _("budgets and rate limits")
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(api_key__isnull=False, user__isnull=True, group__isnull=True)
                    | models.Q(api_key__isnull=True, user__isnull=False, group__isnull=True)
                    | models.Q(api_key__isnull=True, user__isnull=True, group__isnull=False)
                ),
                name="od_allowance_one_subject",
            ),
        ]

    def __str__(self):
        return f"{_('budget and rate limits')} of {self.subject_label}"

    @property
    def subject_label(self):
        if self.api_key_id:
            return f"key {self.api_key}"
        if self.user_id:
            return f"user {self.user}"
        return f"group {self.group}"

    def budgets(self):
        """``[(period, usd limit or None, tokens limit or None)]`` of the periods it limits."""
        out = []
        for period in PERIODS:
            usd = getattr(self, f"{period}_usd")
            tokens = getattr(self, f"{period}_tokens")
            if usd is not None or tokens is not None:
                out.append((period, usd, tokens))
        return out


PERIODS = ("daily", "monthly", "total")


class BudgetWindow(models.Model):
    """What one budget period of an allowance has spent, and what calls in flight reserved."""

    class Period(models.TextChoices):
        DAILY = "daily", _("day")
        MONTHLY = "monthly", _("month")
        TOTAL = "total", _("total")

    allowance = models.ForeignKey(Allowance, on_delete=models.CASCADE, related_name="windows",
                                  verbose_name=_("allowance"))
    period = models.CharField(_("period"), max_length=8, choices=Period.choices)
    start = models.DateField(_("start"), help_text=_("The day, or the month's first day."))
    spent_usd = models.DecimalField(_("spent (USD)"), default=0, **USD)
    spent_tokens = models.BigIntegerField(_("spent (tokens)"), default=0)
    reserved_usd = models.DecimalField(_("reserved (USD)"), default=0, **USD)
    reserved_tokens = models.BigIntegerField(_("reserved (tokens)"), default=0)
    calls = models.PositiveIntegerField(_("calls charged"), default=0)

    class Meta:
        verbose_name = _("budget period")
        verbose_name_plural = _("budget periods")
        constraints = [
            models.UniqueConstraint(fields=["allowance", "period", "start"],
                                    name="od_budget_window_unique"),
        ]

    def __str__(self):
        return f"{self.allowance_id} {self.period} {self.start}"


class BudgetReservation(models.Model):
    """What one call in flight holds of one budget window until it is charged."""

    call_id = models.UUIDField(_("call"), db_index=True)
    window = models.ForeignKey(BudgetWindow, on_delete=models.CASCADE,
                               related_name="reservations")
    usd = models.DecimalField(_("USD"), default=0, **USD)
    tokens = models.BigIntegerField(_("tokens"), default=0)
    created = models.DateTimeField(_("created"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("budget reservation")
        verbose_name_plural = _("budget reservations")


class RateWindow(models.Model):
    """One minute's counters of one rate-limited subject (the database backend)."""

    key = models.CharField(_("key"), max_length=100)
    window = models.BigIntegerField(_("minute"), help_text=_("Minutes since the epoch (UTC)."))
    requests = models.PositiveIntegerField(_("requests"), default=0)
    tokens = models.BigIntegerField(_("tokens"), default=0)

    class Meta:
        verbose_name = _("rate-limit window")
        verbose_name_plural = _("rate-limit windows")
        constraints = [
            models.UniqueConstraint(fields=["key", "window"], name="od_rate_window_unique"),
        ]
