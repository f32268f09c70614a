"""Recomputing the stored costs of recorded calls after a price change.

A new release of ``genai-prices`` (``pip install -U genai-prices``) or a change of
``OPENAI_DJANGO["PRICES"]`` changes what :func:`openai_django.pricing.estimate_cost` answers;
:func:`reprice` (``manage.py openai_reprice``) writes the new costs to the finished calls that
match, in batches of one transaction each, walking the calls in (created, id) order so an
interrupted run can be rerun and nothing is read twice.
"""

import re
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Q

from openai_django.models import Call

BATCH = 1000

# What estimate_cost reads of a call (the bodies for image counts, durations and modalities).
COST_FIELDS = ("id", "created", "operation", "model", "status", "prompt_tokens",
               "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
               "cost_usd", "request_body", "response_body")

FINISHED = (Call.Status.SUCCEEDED, Call.Status.FAILED, Call.Status.CANCELLED)


@dataclass
class Report:
    checked: int = 0
    changed: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)
    dry_run: bool = False

    def as_dict(self):
        return {"checked": self.checked, "changed": self.changed, "dry_run": self.dry_run,
                "total_before_usd": str(self.before), "total_after_usd": str(self.after),
                "difference_usd": str(self.after - self.before)}

    def __str__(self):
        verb = "would change" if self.dry_run else "changed"
        return (f"Checked {self.checked} calls: {self.changed} {verb}. Total estimated cost "
                f"before ${self.before}, after ${self.after} "
                f"(difference ${self.after - self.before}).")


def model_filter(pattern):
    """A filter for a model name or a pattern where ``*`` matches anything (``gpt-4.1*``)."""
    if "*" not in pattern:
        return Q(model=pattern)
    if pattern.endswith("*") and "*" not in pattern[:-1]:
        return Q(model__startswith=pattern[:-1])
    return Q(model__regex="^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$")


def calls_to_reprice(*, since=None, until=None, model=None, queryset=None):
    calls = Call.objects.all() if queryset is None else queryset
    calls = calls.filter(status__in=FINISHED)
    if since is not None:
        calls = calls.filter(created__gte=since)
    if until is not None:
        calls = calls.filter(created__lt=until)
    if model:
        calls = calls.filter(model_filter(model))
    return calls


def reprice(queryset, *, dry_run=False, batch=BATCH, limit=None):
    """Recompute ``cost_usd`` of the calls of ``queryset``, writing only the rows whose cost
    changed (nothing with ``dry_run``); returns a :class:`Report`."""
    from openai_django.pricing import estimate_cost

    report = Report(dry_run=dry_run)
    # Bodies kept apart (models.RequestBody) are read a page at a time, not one query a call.
    calls = (queryset.select_related(None).defer(None).only(*COST_FIELDS)
             .prefetch_related("request_body").order_by("created", "id"))
    last = None
    while limit is None or report.checked < limit:
        page = calls
        if last is not None:
            page = page.filter(Q(created__gt=last[0]) | Q(created=last[0], id__gt=last[1]))
        size = batch if limit is None else min(batch, limit - report.checked)
        rows = list(page[:size])
        if not rows:
            break
        changed = []
        for call in rows:
            cost = estimate_cost(call)
            report.before += call.cost_usd or 0
            report.after += cost or 0
            if cost != call.cost_usd:
                call.cost_usd = cost
                changed.append(call)
        report.checked += len(rows)
        report.changed += len(changed)
        if changed and not dry_run:
            with transaction.atomic():
                Call.objects.bulk_update(changed, ["cost_usd"], batch_size=batch)
        last = (rows[-1].created, rows[-1].id)
    if report.changed and not dry_run:
        from openai_django.admin.usage import forget_cached_usage

        forget_cached_usage()
    return report
