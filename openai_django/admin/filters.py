"""Changelist filters that stay cheap on a million-row table.

Django's stock filters build their choices from the data (``RelatedFieldListFilter`` loads every
user, ``AllValuesFieldListFilter`` runs ``SELECT DISTINCT`` over the table). These take their
choices from the spec registry, from a loose index scan, or from what the admin types, and every
one of them filters on an indexed column.
"""

import logging
import uuid
from types import MappingProxyType

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import connections
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from openai_django.models import APIKey, Call

logger = logging.getLogger("openai_django.admin")

MODEL_CHOICES_CACHE_SECONDS = 300
MODEL_CHOICES_MAX = 200


def operation_label(operation_id):
    """A short human label for an operationId: "Create chat completion" -> "Chat completion"."""
    from openai_django.spec import get_registry

    op = get_registry().operations.get(operation_id)
    name = (op.name if op is not None else "") or operation_id
    if name.startswith("Create ") and len(name) > 7:
        name = name[7:]
        name = name[:1].upper() + name[1:]
    return name


def group_label(group):
    """A spec group (tag) as a heading: "fine-tuning" -> "Fine tuning"."""
    text = (group or "other").replace("-", " ").replace("_", " ")
    return text[:1].upper() + text[1:]


class OperationFilter(admin.SimpleListFilter):
    """Both specs' operations (no query: the registry knows them), grouped by the spec's tag,
    the deprecated ones marked and listed last in their group."""

    title = _("operation")
    parameter_name = "operation"
    template = "openai_django/admin/operation_filter.html"

    def lookups(self, request, model_admin):
        from openai_django.spec import get_registry

        ops = sorted(get_registry(), key=lambda op: (op.group or "~", op.deprecated,
                                                     operation_label(op.id).lower()))
        self.groups = {op.id: group_label(op.group) for op in ops}
        return [(op.id, operation_label(op.id) + (" (deprecated)" if op.deprecated else ""))
                for op in ops]

    def choices(self, changelist):
        """Django's choices with the group each belongs to (the template folds by group)."""
        lookups = [None, *(value for value, _label in self.lookup_choices)]
        for value, choice in zip(lookups, super().choices(changelist), strict=True):
            choice["group"] = self.groups.get(value, "") if value else ""
            choice["value"] = value or ""
            yield choice

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(operation=self.value())
        return queryset


def kind_operations(name):
    """The operation ids of the kind ``name`` (the list filters on the indexed operation)."""
    from openai_django import kinds
    from openai_django.spec import get_registry

    return [op.id for op in get_registry() if kinds.of(op).name == name]


class KindFilter(admin.SimpleListFilter):
    """Calls by family (chat, Responses, speech, batches...): the ids of its operations."""

    title = _("kind")
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        from openai_django import kinds
        from openai_django.spec import get_registry

        present = {kinds.of(op).name for op in get_registry()}
        return sorted(((k.name, str(k.label)) for k in kinds.KINDS.values()
                       if k.name in present), key=lambda pair: pair[1])

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(operation__in=kind_operations(self.value()))


def distinct_models(using="default"):
    """Every distinct ``model`` value, by a loose index scan on ``od_call_model_created``.

    ``SELECT DISTINCT model`` reads the whole table (or index); the recursive query below jumps
    from one model to the next through the index instead, so it costs one index seek per
    distinct model whatever the table's size. Works on SQLite and PostgreSQL alike.
    """
    table = connections[using].ops.quote_name(Call._meta.db_table)
    sql = (
        f"WITH RECURSIVE models(name, n) AS ("
        f"  SELECT (SELECT MIN(model) FROM {table}), 0"
        f"  UNION ALL"
        f"  SELECT (SELECT MIN(model) FROM {table} WHERE model > models.name), n + 1"
        f"  FROM models WHERE models.name IS NOT NULL AND n < {MODEL_CHOICES_MAX}"
        f") SELECT name FROM models WHERE name IS NOT NULL"
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def known_models():
    """The distinct models seen, cached for a few minutes (the list changes rarely)."""
    key = "openai_django:admin:models"
    models = cache.get(key)
    if models is None:
        models = distinct_models()
        cache.set(key, models, MODEL_CHOICES_CACHE_SECONDS)
    return models


class ModelFilter(admin.SimpleListFilter):
    title = _("model")
    parameter_name = "model"

    def lookups(self, request, model_admin):
        choices = [(m, m) for m in known_models() if m]
        choices.append(("-", _("(none)")))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == "-":
            return queryset.filter(model="")
        if value:
            return queryset.filter(model=value)
        return queryset


def unsucceeded(queryset):
    """``queryset`` with the condition of the partial index ``od_call_status_created``
    spelled out: PostgreSQL infers it from ``status = 'failed'``, SQLite uses a partial index
    only when the query repeats its condition."""
    return queryset.exclude(status=Call.Status.SUCCEEDED)


class StatusFilter(admin.SimpleListFilter):
    """Status from the choices (no query), through the partial status index."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return Call.Status.choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == Call.Status.SUCCEEDED:
            return queryset.filter(status=value)
        if value in Call.Status.values:
            return unsucceeded(queryset.filter(status=value))
        return queryset


class HasErrorFilter(admin.SimpleListFilter):
    """Failed calls, and why, through the ``(status, created)`` index."""

    title = _("has error")
    parameter_name = "error"
    KINDS = MappingProxyType({
        "upstream": (Call.Outcome.UPSTREAM_ERROR,),
        "timeout": (Call.Outcome.TIMEOUT,),
        "unreachable": (Call.Outcome.UNREACHABLE, Call.Outcome.BAD_RESPONSE,
                        Call.Outcome.STREAM_BROKEN, Call.Outcome.STREAM_INCOMPLETE),
        "rejected": (Call.Outcome.REJECTED,),
    })

    def lookups(self, request, model_admin):
        return [
            ("yes", _("Yes")),
            ("no", _("No")),
            ("upstream", _("Upstream answered an error")),
            ("timeout", _("Timed out")),
            ("unreachable", _("Unreachable or broken")),
            ("rejected", _("Rejected by the gateway")),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "yes":
            return unsucceeded(queryset.filter(status=Call.Status.FAILED))
        if value == "no":
            return queryset.exclude(status=Call.Status.FAILED)
        if value in self.KINDS:
            return unsucceeded(queryset.filter(status=Call.Status.FAILED,
                                               outcome__in=self.KINDS[value]))
        return queryset


class ReplayFilter(admin.SimpleListFilter):
    title = _("is replay")
    parameter_name = "replay"

    def lookups(self, request, model_admin):
        return [
            ("yes", _("Replays")),
            ("no", _("Not replays")),
            ("replayed", _("Originals that were replayed")),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "yes":
            return queryset.filter(replay_of__isnull=False)
        if value == "no":
            return queryset.filter(replay_of__isnull=True)
        if value == "replayed":
            # Few calls are replayed: their ids come from the partial replay_of index.
            return queryset.filter(pk__in=Call.objects.filter(replay_of__isnull=False)
                                   .values("replay_of"))
        return queryset


class InputFilter(admin.SimpleListFilter):
    """A filter the admin types into (a user or a key), for tables too large to list."""

    template = "openai_django/admin/input_filter.html"
    placeholder = ""

    def lookups(self, request, model_admin):
        # One pseudo choice so that the filter is shown; the template draws a text box.
        return [(self.value() or "", self.value() or "")]

    def choices(self, changelist):
        params = changelist.get_filters_params()
        params.pop(self.parameter_name, None)
        hidden = [(k, v) for k, values in params.lists() for v in values] \
            if hasattr(params, "lists") else list(params.items())
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": hidden,
            "search": changelist.query,
            "clear_link": changelist.get_query_string(remove=[self.parameter_name]),
            "label": self.describe(),
        }

    def describe(self):
        return ""


class LookupFilter(InputFilter):
    """A typed-in filter that matches a few objects by their fields (never a dropdown of every
    user or key) and filters the calls on ``field__in`` their ids; looked up once a request."""

    field = None  # the Call field the ids filter on
    not_found = ""

    def _ids(self):
        if not hasattr(self, "_found"):
            self._found = self._lookup_ids()
        return self._found

    def _lookup_ids(self):
        raise NotImplementedError

    def describe(self):
        if not self.value():
            return ""
        return "" if self._ids() else self.not_found

    def queryset(self, request, queryset):
        ids = self._ids()
        if ids is None:
            return queryset
        return queryset.filter(**{f"{self.field}__in": ids})


class UserFilter(LookupFilter):
    title = _("user")
    parameter_name = "user"
    placeholder = _("user name or id")
    field = "user"
    not_found = _("no such user")

    def _lookup_ids(self):
        value = (self.value() or "").strip()
        if not value:
            return None
        User = get_user_model()
        condition = Q(**{User.USERNAME_FIELD: value})
        pk_field = User._meta.pk
        try:
            condition |= Q(pk=pk_field.to_python(value))
        except (TypeError, ValueError, ValidationError):
            logger.debug("%r is not a user id; matching user names only", value)
        return list(User._default_manager.filter(condition).values_list("pk", flat=True)[:5])


class KeyFilter(LookupFilter):
    title = _("API key")
    parameter_name = "key"
    placeholder = _("key id, prefix or name")
    field = "api_key"
    not_found = _("no such key")

    def _lookup_ids(self):
        value = (self.value() or "").strip()
        if not value:
            return None
        condition = Q(name=value) | Q(prefix=value)
        if value.isdigit():
            condition |= Q(pk=int(value))
        if "…" in value:  # a masked key as shown in the admin: prefix…last4
            prefix, _sep, last4 = value.partition("…")
            condition |= Q(prefix=prefix, last4=last4)
        return list(APIKey.objects.filter(condition).values_list("pk", flat=True)[:20])


def parse_uuid(value):
    try:
        return uuid.UUID(str(value).strip())
    except (TypeError, ValueError):
        return None


class ObjectFilter(InputFilter):
    """Every call about one upstream object (``object_id``, indexed): a file, a batch, a
    response, a fine-tuning job."""

    title = _("upstream object")
    parameter_name = "object"
    placeholder = "file-…, batch_…, resp_…"

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(object_id=value) if value else queryset
