"""Budgets and rate limits applied to every call: checked before the upstream is asked,
charged when the call finishes. The rules are in :mod:`openai_django.limits` (requests and
tokens per minute) and :mod:`openai_django.budgets` (dollars and tokens per day, month, total);
this module applies them and is the Python API to set them.

The gateway calls :func:`admit` in ``gateway.begin`` (before the record is started, for sync,
stream and background calls alike: a background call is checked and its budget reserved when
it is *submitted*, so a refused one is answered at once and a queue of 1,000 jobs cannot be
submitted past a budget) and :func:`attach` on the record; the end of the call reaches
:func:`call_ended` through the ``call_finished``/``call_failed`` signals, in whichever process
finishes it (the web process, a Celery worker, or the sweep of a crashed one).

Every allowance that applies must let the call through: its API key's, its user's and each
of its user's groups' (a group's allowance is shared by its members together). A refusal is
a 429 in the OpenAI shape (``rate_limit_exceeded`` with ``Retry-After`` and the
``x-ratelimit-*`` headers, or ``insufficient_quota``), recorded as a rejected call; nothing
is sent upstream. Budgets apply to the operations the price table prices (chat, responses,
embeddings, images, audio...), rate limits to every operation.

Token estimate (for tokens per minute and token budgets): the prompt as a quarter of the
request's JSON bytes (an over-count for text), plus the output limit the request sets
(``max_completion_tokens``, ``max_output_tokens`` or ``max_tokens``, times ``n``), else
``ESTIMATED_OUTPUT_TOKENS`` (none for embeddings and moderations). The dollar estimate is the
price table applied to those tokens.
"""

import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from django.db import transaction

from openai_django import budgets, limits
from openai_django.conf import app_settings
from openai_django.errors import OpenAIDjangoError, Throttled

logger = logging.getLogger("openai_django.controls")

__all__ = ["clear_allowance", "get_allowance", "set_budget", "set_rate_limit", "spend"]

_NO_OUTPUT = ("embedding", "moderation")
_UNSET = object()


class RateLimited(Throttled):
    """429 ``rate_limit_exceeded`` (type ``requests`` or ``tokens``, as OpenAI answers)."""

    def __init__(self, message, *, on, headers):
        super().__init__(message, headers=headers)
        self.error_type = on


class InsufficientQuota(OpenAIDjangoError):
    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"
    default_message = ("You exceeded your current quota, please check your plan and billing "
                       "details.")


@dataclass
class Admission:
    """What a call took when it was admitted, given back or corrected when it ends."""

    limits: list = field(default_factory=list)
    window: int | None = None
    tokens: int = 0  # the estimate counted against tokens per minute
    held: list = field(default_factory=list)  # budgets.Held
    headers: dict = field(default_factory=dict)
    background: bool = False
    done: bool = False


# -- estimates -----------------------------------------------------------------------------


def estimate_tokens(invocation):
    """``(prompt, output)`` tokens a call may use, before it is sent (module docstring)."""
    body = invocation.body
    if isinstance(body, (dict, list)):
        size = len(invocation.raw_body) if invocation.raw_body is not None \
            else len(orjson.dumps(body))
    else:
        size = len(invocation.raw_body or b"")
    prompt = math.ceil(size / 4)
    if not isinstance(body, dict) or invocation.operation.method != "POST":
        return prompt, 0
    op_id = invocation.operation.id.lower()
    if any(word in op_id for word in _NO_OUTPUT):
        return prompt, 0
    output = None
    for name in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            output = value
            break
    if output is None:
        output = int(app_settings.ESTIMATED_OUTPUT_TOKENS)
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        output *= n
    return prompt, output


def estimate_usd(invocation, prompt, output):
    """The price table applied to the estimated tokens (0 when nothing prices it)."""
    from openai_django.models import Call
    from openai_django.pricing import estimate_cost

    op = invocation.operation
    body = invocation.body if isinstance(invocation.body, dict) else None
    call = Call(operation=op.id, model=op.model_from(invocation.body, invocation.path_kwargs),
                status=Call.Status.RUNNING, prompt_tokens=prompt, completion_tokens=output,
                total_tokens=prompt + output, request_body=body)
    try:
        return estimate_cost(call, invocation.kind) or Decimal(0)
    except Exception:
        logger.exception("Could not estimate the cost of a %s call", op.id)
        return Decimal(0)


# -- what applies --------------------------------------------------------------------------


_sql = {}  # connection vendor -> the lookup's SQL


def _lookup_sql():
    """One statement (built once per process and database vendor): the allowances of a
    key, of a user and of the user's groups, with the group's name."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection

    from openai_django.models import Allowance

    vendor = connection.vendor
    if vendor in _sql:
        return _sql[vendor]
    quote = connection.ops.quote_name
    table = quote(Allowance._meta.db_table)
    groups = ""
    try:
        field = get_user_model()._meta.get_field("groups")
        through = field.remote_field.through._meta
        user_column = through.get_field(field.m2m_field_name()).column
        group_column = through.get_field(field.m2m_reverse_field_name()).column
        groups = (f" OR a.group_id IN (SELECT t.{quote(group_column)} FROM "
                  f"{quote(through.db_table)} t WHERE t.{quote(user_column)} = %s)")
    except Exception:  # a user model without groups
        groups = ""
    columns = ", ".join(f"a.{quote(name)}" for name in LOOKUP_FIELDS)
    sql = (f"SELECT {columns}, g.{quote('name')} FROM {table} a LEFT JOIN "
           f"{quote(Group._meta.db_table)} g ON g.{quote('id')} = a.group_id "
           f"WHERE a.api_key_id = %s OR a.user_id = %s{groups}")
    _sql[vendor] = (sql, bool(groups))
    return _sql[vendor]


LOOKUP_FIELDS = ("id", "api_key_id", "user_id", "group_id", "requests_per_minute",
                 "tokens_per_minute", "daily_usd", "daily_tokens", "monthly_usd",
                 "monthly_tokens", "total_usd", "total_tokens")


class _Subjects:
    """Which keys, users and groups have an allowance at all, kept per process for
    ``LIMITS_CACHE_SECONDS`` (one small query a second instead of a lookup a call): a call of
    a key and user that have none, and whose user may be in no group that has one, costs
    nothing. What an allowance *says* is always read at the call; only a subject that had no
    allowance and gets one from another process waits up to that long to be checked (this
    process's own saves apply at once)."""

    MAX = 10_000  # more subjects than this: every call is looked up

    def __init__(self):
        self.at = None
        self.keys = self.users = frozenset()
        self.groups = self.everyone = False
        self.lock = threading.Lock()

    def forget(self, **kwargs):
        self.at = None

    def refresh(self):
        from django.db import connection

        from openai_django.models import Allowance

        table = connection.ops.quote_name(Allowance._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT api_key_id, user_id, group_id FROM {table}")
            rows = cursor.fetchmany(self.MAX + 1)
        self.everyone = len(rows) > self.MAX
        self.keys = frozenset(r[0] for r in rows if r[0] is not None)
        self.users = frozenset(r[1] for r in rows if r[1] is not None)
        self.groups = any(r[2] is not None for r in rows)

    def might_apply(self, key_id, user_id):
        ttl = app_settings.LIMITS_CACHE_SECONDS
        if not ttl:
            return True
        now = time.monotonic()
        if self.at is None or now - self.at > ttl:
            with self.lock:
                if self.at is None or now - self.at > ttl:
                    stamp = time.monotonic()
                    self.refresh()
                    self.at = stamp
        return self.everyone or key_id in self.keys or user_id in self.users or (
            self.groups and user_id is not None)


subjects = _Subjects()


def allowances_for(user=None, api_key=None, *, cached=False):
    """The allowances that apply to a call of ``api_key`` / ``user``: the key's, the
    user's and those of the user's groups (one query, no ORM compiling; with ``cached``,
    none when :data:`subjects` says nothing can apply)."""
    key_id = getattr(api_key, "pk", None)
    user_id = getattr(user, "pk", None)
    if key_id is None and user_id is None:
        return []
    if cached and not subjects.might_apply(key_id, user_id):
        return []  # before the imports below: each is a failed module.__path__ lookup
    from django.db import connection

    from openai_django.models import Allowance

    sql, groups = _lookup_sql()
    params = [key_id, user_id] + ([user_id] if groups else [])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    found = []
    for row in rows:
        values = dict(zip(LOOKUP_FIELDS, row[:-1], strict=True))
        for name in ("daily_usd", "monthly_usd", "total_usd"):
            if values[name] is not None and not isinstance(values[name], Decimal):
                values[name] = Decimal(str(values[name]))
        allowance = Allowance(**values)
        if allowance.api_key_id:
            allowance._od_label = f"API key {api_key.masked}" \
                if api_key is not None and api_key.pk == allowance.api_key_id else None
        elif allowance.user_id:
            allowance._od_label = f"user {user.get_username()}" \
                if user is not None and user.pk == allowance.user_id else None
        else:
            allowance._od_label = f"group {row[-1]}"
        found.append(allowance)
    return found


def _label(allowance):
    label = getattr(allowance, "_od_label", None)
    if label:
        return label
    if allowance.api_key_id:
        return f"API key {allowance.api_key.masked}"
    if allowance.user_id:
        return f"user {allowance.user.get_username()}"
    return f"group {allowance.group.name}"


def _key(allowance):
    if allowance.api_key_id:
        return f"k:{allowance.api_key_id}"
    if allowance.user_id:
        return f"u:{allowance.user_id}"
    return f"g:{allowance.group_id}"


# -- the gateway's call sites --------------------------------------------------------------


def admit(invocation):
    """Check the call's rate limits and reserve its budgets; returns an :class:`Admission`
    (``None`` when nothing limits it). A refusal is recorded as a rejected call and raised
    (:class:`RateLimited` or :class:`InsufficientQuota`)."""
    if not app_settings.LIMITS:
        return None
    rows = allowances_for(invocation.user, invocation.api_key, cached=True)
    if not rows:
        return None
    rate = [limits.Limit(_key(a), _label(a), a.requests_per_minute, a.tokens_per_minute)
            for a in rows if a.requests_per_minute is not None or a.tokens_per_minute is not None]
    priced = invocation.kind.price_basis is not None and app_settings.RECORD
    owed = [budgets.Budget(a.pk, period, usd, tokens, _label(a))
            for a in rows for period, usd, tokens in a.budgets()] if priced else []
    if not rate and not owed:
        return None
    from openai_django.models import Call

    prompt, output = estimate_tokens(invocation)
    admission = Admission(tokens=prompt + output,
                          background=invocation.mode == Call.Mode.ASYNC)
    backend = limits.get_backend() if rate else None
    in_db = isinstance(backend, limits.DatabaseBackend)
    try:
        # With the database backend, the rate counts and the reservations are one
        # transaction (one commit; a budget refusal rolls the counts back with it).
        with transaction.atomic() if in_db and owed else nullcontext():
            if rate:
                outcome = backend.check(rate, admission.tokens)
                admission.headers = limits.headers(outcome)
                if not outcome.allowed:
                    raise _rate_error(outcome, admission)
                admission.limits, admission.window = rate, outcome.window
            if owed:
                from openai_django.models import uuid7

                usd = estimate_usd(invocation, prompt, output)
                invocation.call_id = uuid7()  # the record's id (recorder._new_call)
                try:
                    admission.held = budgets.reserve(owed, invocation.call_id, usd,
                                                     prompt + output)
                except budgets.Exhausted as exc:
                    if backend is not None and not in_db:
                        backend.refund(rate, admission.window, admission.tokens)
                    raise _quota_error(exc, admission) from None
    except (RateLimited, InsufficientQuota) as exc:
        from openai_django import recorder  # here: a package's import runs _handle_fromlist

        invocation.call_id = None
        exc.call = recorder.reject(invocation, exc)
        raise
    return admission


def _rate_error(outcome, admission):
    count, on = outcome.refused_by, outcome.refused_on
    limit = count.limit.requests if on == "requests" else count.limit.tokens
    used = count.requests if on == "requests" else count.tokens
    requested = 1 if on == "requests" else admission.tokens
    unit = "requests per minute (RPM)" if on == "requests" else "tokens per minute (TPM)"
    message = (f"Rate limit reached for {count.limit.label} on {unit}: Limit {limit}, Used "
               f"{used}, Requested {requested}. Please try again in "
               f"{limits.duration(outcome.reset)}.")
    if on == "tokens" and requested > limit:
        message = (f"Request too large for {count.limit.label} on {unit}: Limit {limit}, "
                   f"Requested {requested} (estimated). Lower max_tokens or the input.")
    return RateLimited(message, on=on, headers=admission.headers)


def _quota_error(exc, admission):
    budget = exc.budget
    period = {"daily": "daily", "monthly": "monthly", "total": "total"}[budget.period]
    if exc.on == "usd":
        left = max(Decimal(0), budget.usd - exc.spent - exc.reserved)
        detail = (f"the {period} budget of {budget.label} is ${budget.usd:f}, ${left:.6f} is "
                  f"left and this call may cost up to ${exc.estimate:.6f}")
    else:
        left = max(0, budget.tokens - exc.spent - exc.reserved)
        detail = (f"the {period} budget of {budget.label} is {budget.tokens} tokens, {left} "
                  f"are left and this call may use up to {exc.estimate}")
    error = InsufficientQuota(f"You exceeded your current quota: {detail}.")
    error.headers = dict(admission.headers)
    return error


def attach(call, admission):
    """Keep the admission on the record the gateway started (returns ``call``)."""
    call._od_admission = admission
    return call


def release(admission):
    """Give back what an admitted call took when it is never sent (its record could not be
    written)."""
    if admission is None or admission.done:
        return
    admission.done = True
    try:
        if admission.held:
            budgets.settle(admission.held, 0, 0)
        if admission.limits:
            limits.get_backend().refund(admission.limits, admission.window, admission.tokens)
    except Exception:
        logger.exception("Could not release a call's budget reservation and rate count")


def headers_of(call):
    """The ``x-ratelimit-*`` headers of an admitted call, for its answer."""
    admission = getattr(call, "_od_admission", None)
    return admission.headers if admission is not None else {}


_MISSING = object()


def call_ended(sender, call, **kwargs):
    """Charge a finished call (``call_finished``/``call_failed`` receiver): its budgets get
    its real usage and cost in place of the reservation, its tokens-per-minute count is
    corrected. Never raises."""
    admission = getattr(call, "_od_admission", _MISSING)
    if admission is None:
        return
    try:
        if admission is _MISSING:
            # Finished by another process than the one that admitted it (a worker, a sweep):
            # its reservations are read back by its id.
            if call.outcome == "rejected":
                return
            held = budgets.held_by(call.pk)
            if held:
                budgets.settle(held, call.cost_usd or 0, budgets.charged_tokens(call))
            return
        if admission.done:
            return
        admission.done = True
        tokens = budgets.charged_tokens(call)
        correct = bool(admission.limits) and not admission.background \
            and tokens != admission.tokens
        backend = limits.get_backend() if correct else None
        # The database backend's correction commits with the settlement; rate rows are
        # locked before budget rows, in the same order as admit() (no deadlock between them).
        with transaction.atomic() if admission.held and correct and isinstance(
                backend, limits.DatabaseBackend) else nullcontext():
            if correct:
                backend.correct(admission.limits, admission.window, tokens - admission.tokens)
            if admission.held:
                budgets.settle(admission.held, call.cost_usd or 0, tokens)
    except Exception:
        logger.exception("Could not charge call %s to its budgets", call.pk)


def sweep():
    """Housekeeping run with the sweep of stale calls: reservations left behind, past
    windows of the database rate-limit backend. Returns counts (never raises)."""
    try:
        return {"reservations": budgets.sweep_reservations(),
                "rate_windows": limits.purge_old_windows()}
    except Exception:
        logger.exception("The sweep of budget reservations and rate windows failed")
        return {}


def check_settings(app_configs=None, **kwargs):
    """System check: the rate-limit backend can be built (``openai_django.E010``)."""
    from django.core.checks import Error
    from django.core.exceptions import ImproperlyConfigured

    try:
        limits.get_backend()  # builds no connection: a Redis client connects when used
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="openai_django.E010")]
    return []


# -- the Python API ------------------------------------------------------------------------


def _subject(subject):
    """``{"api_key": ...}``, ``{"user": ...}`` or ``{"group": ...}`` for a subject."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from openai_django.models import APIKey

    if isinstance(subject, APIKey):
        return {"api_key": subject}
    if isinstance(subject, Group):
        return {"group": subject}
    if isinstance(subject, get_user_model()):
        return {"user": subject}
    raise TypeError(f"A budget belongs to an APIKey, a user or a Group, not {subject!r}.")


def get_allowance(subject):
    """The :class:`~openai_django.models.Allowance` of a key, user or group, or ``None``."""
    from openai_django.models import Allowance

    return Allowance.objects.filter(**_subject(subject)).first()


def _update(subject, values):
    from openai_django.models import Allowance

    values = {k: v for k, v in values.items() if v is not _UNSET}
    allowance, _ = Allowance.objects.get_or_create(**_subject(subject))
    for name, value in values.items():
        if value is not None:
            if name.endswith("_usd"):
                value = Decimal(str(value))
                if value < 0:
                    raise ValueError(f"{name} must not be negative.")
            else:
                value = int(value)
                if value < 0:
                    raise ValueError(f"{name} must not be negative.")
        setattr(allowance, name, value)
    allowance.full_clean()
    allowance.save()
    return allowance


def set_budget(subject, *, daily_usd=_UNSET, monthly_usd=_UNSET, total_usd=_UNSET,
               daily_tokens=_UNSET, monthly_tokens=_UNSET, total_tokens=_UNSET):
    """Set budgets of an ``APIKey``, a user or a ``Group``: dollars and/or tokens per day,
    per month, in total. A keyword left out keeps its value; ``None`` removes that budget.
    Returns the :class:`~openai_django.models.Allowance`::

        openai_django.set_budget(team, monthly_usd=200, daily_tokens=2_000_000)
    """
    return _update(subject, {
        "daily_usd": daily_usd, "monthly_usd": monthly_usd, "total_usd": total_usd,
        "daily_tokens": daily_tokens, "monthly_tokens": monthly_tokens,
        "total_tokens": total_tokens})


def set_rate_limit(subject, *, requests_per_minute=_UNSET, tokens_per_minute=_UNSET):
    """Set the rate limits of an ``APIKey``, a user or a ``Group`` (``None`` removes one)."""
    return _update(subject, {"requests_per_minute": requests_per_minute,
                             "tokens_per_minute": tokens_per_minute})


def clear_allowance(subject):
    """Remove every budget and rate limit of a subject (and what its budgets counted)."""
    from openai_django.models import Allowance

    return Allowance.objects.filter(**_subject(subject)).delete()[0] > 0


def spend(subject):
    """This period's spend of each budget of a subject: a list of dicts (``period``,
    ``start``, ``limit_usd``, ``limit_tokens``, ``spent_usd``, ``spent_tokens``,
    ``reserved_usd``, ``reserved_tokens``, ``calls``, ``share``); ``[]`` without budgets."""
    allowance = get_allowance(subject)
    return budgets.state(allowance) if allowance is not None else []


def _connect():
    from django.core import checks

    from openai_django.signals import call_failed, call_finished

    checks.register(check_settings, "openai_django")
    from django.core.signals import setting_changed
    from django.db.models.signals import post_delete, post_save

    from openai_django.models import Allowance

    post_save.connect(subjects.forget, sender=Allowance, dispatch_uid="od_allowance_saved")
    post_delete.connect(subjects.forget, sender=Allowance, dispatch_uid="od_allowance_deleted")
    setting_changed.connect(subjects.forget, dispatch_uid="od_allowance_settings")
    call_finished.connect(call_ended, dispatch_uid="openai_django.controls.call_ended")
    call_failed.connect(call_ended, dispatch_uid="openai_django.controls.call_failed")


_connect()
