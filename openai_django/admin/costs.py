"""Recomputing the estimated cost of recorded calls after the price table changed."""

import logging

from django.db import transaction

from openai_django.models import Call
from openai_django.repricing import COST_FIELDS  # what estimate_cost reads of a call

logger = logging.getLogger("openai_django.admin")

BATCH = 1000


def recompute(queryset, *, limit=None, batch=BATCH):
    """Recompute ``cost_usd`` of the calls of ``queryset`` (the first ``limit`` of them, newest
    first), writing only the rows whose cost changed; returns ``(checked, changed)``."""
    from openai_django.pricing import estimate_cost

    # Bodies kept apart (models.RequestBody) are read a chunk at a time, not one query a call.
    calls = (queryset.select_related(None).defer(None).only(*COST_FIELDS)
             .prefetch_related("request_body").order_by("-created"))
    if limit is not None:
        calls = calls[:limit]
    checked = changed = 0
    pending = []
    for call in calls.iterator(chunk_size=batch):
        checked += 1
        cost = estimate_cost(call)
        if cost != call.cost_usd:
            call.cost_usd = cost
            pending.append(call)
        if len(pending) >= batch:
            changed += _save(pending)
    changed += _save(pending)
    logger.info("Recomputed the estimated cost of %s calls (%s changed)", checked, changed)
    return checked, changed


def _save(calls):
    if not calls:
        return 0
    with transaction.atomic():
        Call.objects.bulk_update(calls, ["cost_usd"], batch_size=BATCH)
    count = len(calls)
    calls.clear()
    return count
