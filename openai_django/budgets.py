"""Budgets: dollars and/or tokens per day, per month or in total, of a key, a user or a group.

**How a budget holds under concurrency.** Before a call is sent, its estimated cost (and
tokens) is *reserved* in every budget period that applies, by one conditional ``UPDATE`` per
period row::

    UPDATE budget_window SET reserved = reserved + estimate
     WHERE id = ... AND spent + reserved + estimate <= limit AND spent + reserved < limit

which the database serialises per row (PostgreSQL re-checks the condition on the locked row;
SQLite writes one transaction at a time), so any number of processes and hosts see one
consistent balance. All the periods of a call (its key's, its user's, its groups'; daily,
monthly, total) are reserved in one transaction, all or nothing, with a
:class:`~openai_django.models.BudgetReservation` row per period. When the call finishes, its
reservation is replaced by what it really used (``spent += real, reserved -= estimate``,
from the record's usage and cost: streams included); a call that fails releases its
reservation (charged what its record says it used, usually nothing); a call whose process
died is charged or released when the sweep finishes it as lost.

So at every moment ``spent + reserved <= limit``, and **the overspend is bounded by the calls
in flight when the limit was reached**: the final spend exceeds the limit by at most the sum,
over the calls that were in flight when the last call was admitted, of what each used beyond
its reservation. Where the estimate is an upper bound (a token budget and calls with
``max_tokens``/``max_completion_tokens``/``max_output_tokens``, the prompt counted as a
quarter of its JSON bytes) a budget is never overspent at all. Without an output limit the
estimate takes ``ESTIMATED_OUTPUT_TOKENS`` for the output, and each call in flight may
overspend by what it uses beyond that.

Days and months are those of the site's ``TIME_ZONE``; a call is charged to the period in
which it was admitted.
"""

import datetime
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

ZERO = Decimal(0)
TOTAL_START = datetime.date(1970, 1, 1)


@dataclass
class Budget:
    """One period of one allowance, as checked for a call."""

    allowance_id: int
    period: str
    usd: Decimal | None
    tokens: int | None
    label: str

    def start(self, today):
        if self.period == "daily":
            return today
        if self.period == "monthly":
            return today.replace(day=1)
        return TOTAL_START


@dataclass
class Held:
    """A reservation row: what one call holds of one budget window."""

    id: int
    window_id: int
    usd: Decimal
    tokens: int


class Exhausted(Exception):
    """A budget that cannot take the call: ``budget``, its window's ``spent``/``reserved``."""

    def __init__(self, budget, on, spent, reserved, estimate):
        self.budget, self.on = budget, on
        self.spent, self.reserved, self.estimate = spent, reserved, estimate
        super().__init__(budget.label)


def today():
    return timezone.localdate()


def _take(budget, start, usd, tokens):
    """Reserve in one window (conditional UPDATE); returns the window's id or raises."""
    from openai_django.models import BudgetWindow

    quote = connection.ops.quote_name
    table = quote(BudgetWindow._meta.db_table)
    conditions, params = [], [str(usd), tokens, budget.allowance_id, budget.period, start]
    # Decimals are cast in SQL: SQLite would compare a text parameter as text.
    if budget.usd is not None:
        conditions.append("spent_usd + reserved_usd + CAST(%s AS NUMERIC) <= CAST(%s AS NUMERIC)"
                          " AND spent_usd + reserved_usd < CAST(%s AS NUMERIC)")
        params += [str(usd), str(budget.usd), str(budget.usd)]
    if budget.tokens is not None:
        conditions.append("spent_tokens + reserved_tokens + %s <= %s"
                          " AND spent_tokens + reserved_tokens < %s")
        params += [tokens, budget.tokens, budget.tokens]
    where = "".join(f" AND {c}" for c in conditions)
    sql = (f"UPDATE {table} SET reserved_usd = reserved_usd + CAST(%s AS NUMERIC), "
           f"reserved_tokens = reserved_tokens + %s WHERE allowance_id = %s AND "
           f"{quote('period')} = %s AND {quote('start')} = %s{where}")
    returning = connection.vendor in ("postgresql", "sqlite")
    params[4] = connection.ops.adapt_datefield_value(start)
    for attempt in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql + (" RETURNING id" if returning else ""), params)
            row = cursor.fetchone() if returning else None
            updated = bool(row) if returning else cursor.rowcount
        if updated:
            if row is not None:
                return row[0]
            return BudgetWindow.objects.filter(allowance_id=budget.allowance_id,
                                               period=budget.period, start=start).values_list(
                "id", flat=True).get()
        if attempt == 0:
            # No row yet for this period (or a spent one): make sure it exists (whoever
            # inserts it first), then the same conditional UPDATE decides.
            BudgetWindow.objects.bulk_create(
                [BudgetWindow(allowance_id=budget.allowance_id, period=budget.period,
                              start=start)], ignore_conflicts=True)
    window = BudgetWindow.objects.filter(allowance_id=budget.allowance_id, period=budget.period,
                                         start=start).first()
    spent_usd = window.spent_usd if window else ZERO
    reserved_usd = window.reserved_usd if window else ZERO
    if budget.usd is not None and (spent_usd + reserved_usd + usd > budget.usd
                                   or spent_usd + reserved_usd >= budget.usd):
        raise Exhausted(budget, "usd", spent_usd, reserved_usd, usd)
    raise Exhausted(budget, "tokens", window.spent_tokens if window else 0,
                    window.reserved_tokens if window else 0, tokens)


def reserve(budgets, call_id, usd, tokens):
    """Reserve ``usd`` and ``tokens`` in every budget for the call ``call_id``, all or
    nothing; returns the :class:`Held` reservations or raises :class:`Exhausted`."""
    from openai_django.models import BudgetReservation

    day = today()
    usd = Decimal(usd).quantize(Decimal("0.000001"))
    ordered = sorted(budgets, key=lambda b: (b.allowance_id, b.period))  # one lock order
    quote = connection.ops.quote_name
    table = quote(BudgetReservation._meta.db_table)
    sql = (f"INSERT INTO {table} (call_id, window_id, usd, tokens, created) "
           f"VALUES (%s, %s, %s, %s, %s)")
    returning = connection.vendor in ("postgresql", "sqlite")
    call_value = connection.ops.adapt_unknown_value(call_id) \
        if connection.vendor != "sqlite" else call_id.hex
    created = connection.ops.adapt_datetimefield_value(timezone.now())
    held = []
    with transaction.atomic():
        windows = [_take(budget, budget.start(day), usd, tokens) for budget in ordered]
        with connection.cursor() as cursor:
            for window in windows:
                cursor.execute(sql + (" RETURNING id" if returning else ""),
                               [call_value, window, connection.ops.adapt_decimalfield_value(
                                   usd, 14, 6), tokens, created])
                pk = cursor.fetchone()[0] if returning else None
                held.append(Held(pk, window, usd, tokens))
    if any(item.id is None for item in held):  # a database that returns no ids
        ids = dict(BudgetReservation.objects.filter(call_id=call_id).values_list(
            "window_id", "pk"))
        held = [Held(ids[item.window_id], item.window_id, usd, tokens) for item in held]
    return held


def settle(held, usd, tokens):
    """Replace reservations by what the call really used (``usd``, ``tokens``; zero for a
    release). A reservation already settled (by another path) is left alone."""
    from openai_django.models import BudgetReservation, BudgetWindow

    if not held:
        return
    usd = str(Decimal(usd or 0))
    tokens = int(tokens or 0)
    quote = connection.ops.quote_name
    reservations = quote(BudgetReservation._meta.db_table)
    windows = quote(BudgetWindow._meta.db_table)
    update = (f"UPDATE {windows} SET spent_usd = spent_usd + CAST(%s AS NUMERIC), "
              f"spent_tokens = spent_tokens + %s, "
              f"reserved_usd = reserved_usd - CAST(%s AS NUMERIC), "
              f"reserved_tokens = reserved_tokens - %s, calls = calls + 1 WHERE id = %s")
    with transaction.atomic(), connection.cursor() as cursor:
        for item in sorted(held, key=lambda h: h.window_id):
            # Whoever deletes the reservation settles it (once, whichever path ends the call).
            cursor.execute(f"DELETE FROM {reservations} WHERE id = %s", [item.id])
            if cursor.rowcount:
                cursor.execute(update, [usd, tokens, str(item.usd), item.tokens,
                                        item.window_id])


def held_by(call_id):
    """The reservations of a call, read back (a call finished by another process)."""
    from openai_django.models import BudgetReservation

    return [Held(pk, window, usd, tokens) for pk, window, usd, tokens in
            BudgetReservation.objects.filter(call_id=call_id).values_list(
                "pk", "window_id", "usd", "tokens")]


def state(allowance, day=None):
    """This period's figures of each budget of ``allowance``: a list of dicts with
    ``period, start, limit_usd, limit_tokens, spent_usd, spent_tokens, reserved_usd,
    reserved_tokens, calls``, and ``share`` (0-100, the larger of the two)."""
    from openai_django.models import BudgetWindow

    day = day or today()
    out = []
    for period, limit_usd, limit_tokens in allowance.budgets():
        start = Budget(allowance.pk, period, None, None, "").start(day)
        window = BudgetWindow.objects.filter(allowance=allowance, period=period,
                                             start=start).first()
        row = {
            "period": period, "start": start, "limit_usd": limit_usd,
            "limit_tokens": limit_tokens,
            "spent_usd": window.spent_usd if window else ZERO,
            "spent_tokens": window.spent_tokens if window else 0,
            "reserved_usd": window.reserved_usd if window else ZERO,
            "reserved_tokens": window.reserved_tokens if window else 0,
            "calls": window.calls if window else 0,
        }
        shares = []
        if limit_usd:
            shares.append(float(row["spent_usd"] / limit_usd * 100))
        if limit_tokens:
            shares.append(row["spent_tokens"] / limit_tokens * 100)
        row["share"] = round(min(100.0, max(shares or [0.0])), 1)
        row["over"] = bool(shares) and max(shares) >= 100
        out.append(row)
    return out


def sweep_reservations(older_than=600):
    """Settle reservations left behind: their call finished without settling them (a process
    killed between the two) or was never written. Returns how many were settled."""
    from openai_django.models import BudgetReservation, Call

    cutoff = timezone.now() - datetime.timedelta(seconds=older_than)
    count = 0
    stale = BudgetReservation.objects.filter(created__lt=cutoff).values_list("call_id",
                                                                           flat=True)
    for call_id in set(stale[:1000]):
        call = Call.objects.filter(pk=call_id).only(
            "id", "status", "total_tokens", "prompt_tokens", "completion_tokens",
            "cost_usd").first()
        if call is not None and not call.is_finished:
            continue
        held = held_by(call_id)
        if call is None:
            settle(held, 0, 0)
        else:
            settle(held, call.cost_usd or 0, charged_tokens(call))
        count += len(held)
    return count


def charged_tokens(call):
    if call.total_tokens is not None:
        return call.total_tokens
    return (call.prompt_tokens or 0) + (call.completion_tokens or 0)
