"""Replay recorded calls from the admin, and compare a replay with its original.

A replay is a new call, linked to the original (``replay_of``), performed by a Celery task:
the request is rebuilt from the record (the JSON body, the input files re-attached from
storage), optionally edited, and submitted in background mode. Every way in (the button on a
call page, "edit and replay", the bulk action on the list) goes through a confirmation page,
a POST with CSRF and the ``replay_call`` permission, and reports with ``message_user``.

Replays are made in the name of the admin user who asked, with no client key (they are not
charged to the client's key), no completion callback and no attached object: they are
experiments on real traffic, not the client's own calls.
"""

import json
import logging

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Avg, Count, Q, Sum
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from openai_django.admin import render
from openai_django.admin.filters import known_models, parse_uuid
from openai_django.admin.formatting import format_cost, format_ms, format_tokens
from openai_django.admin.forms import ReplayEditForm, ReplayForm
from openai_django.admin.pagination import LookaheadPaginator
from openai_django.models import Artifact, Call

logger = logging.getLogger("openai_django.admin")

BULK_REPLAY_MAX = 1000
# What the pair-by-pair comparison reads of each call (not the request, headers or attempts).
COMPARED_FIELDS = ("id", "created", "operation", "model", "status", "total_tokens",
                   "cached_tokens", "reasoning_tokens", "latency_ms", "cost_usd", "output_text",
                   "response_text", "response_content_type", "response_body", "stream_events",
                   "error")


def similar(a, b):
    """How alike the answers of two calls are, in percent, as text for a table."""
    ratio = render.similarity(render.comparable_text(a), render.comparable_text(b))
    return f"{ratio * 100:.0f}"


def has_side_effects(operation_id):
    """Whether replaying a call of ``operation_id`` changes something upstream (not only asks
    a question): the confirmation page says so. The operation's kind knows."""
    from openai_django import kinds
    from openai_django.spec import get_registry

    operation = get_registry().operations.get(operation_id)
    return operation is not None and kinds.of(operation).side_effects(operation)


class ReplayError(Exception):
    """The call cannot be sent again (no recorded body, files purged...)."""


def replay_problem(call):
    """Why ``call`` cannot be replayed, or ``None`` if it can."""
    if call.metadata_only:
        return _("only its metadata was recorded")
    if call.body_purged_at:
        return _("its bodies were purged")
    op = call.operation_spec
    if op is None:
        return _("its operation is not in the spec")
    if (op.is_json or op.is_multipart) and call.request_body is None:
        return _("it has no recorded request body")
    return None


def build_replay(original, *, user, overrides=None, body=None, files=None):
    """The invocation of a replay of ``original`` (not yet submitted)."""
    from openai_django.invocation import UploadedInput, from_call

    problem = replay_problem(original)
    if problem:
        raise ReplayError(problem)
    try:
        invocation = from_call(
            original, overrides=overrides, mode=Call.Mode.ASYNC, source=Call.Source.REPLAY,
            replay_of=original, user=user,
        )
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    # Like tasks.replay(): the replay is the admin's (no client key), keeps the object the
    # original was attached to, and sends no callback (from_call sees to both).
    if body is not None:
        invocation.body = body
        invocation.raw_body = None
    for field, upload in (files or {}).items():
        invocation.files = [f for f in invocation.files if f.field != field]
        invocation.files.append(UploadedInput(
            field=field, name=upload.name or field,
            content_type=upload.content_type or "application/octet-stream", file=upload))
    return invocation


def submit_replay(original, **kwargs):
    """Submit a replay of ``original``; returns the new (queued) call."""
    from openai_django import tasks

    return tasks.submit_invocation(build_replay(original, **kwargs))


def takes_model(call):
    """Whether a model override makes sense for this call (its body names a model)."""
    op = call.operation_spec
    return op is not None and (op.is_json or op.is_multipart) and \
        isinstance(call.request_body, dict)


class BatchFilter(admin.SimpleListFilter):
    """The replays made by one bulk replay (shown only when in use)."""

    title = _("replay batch")
    parameter_name = "batch"

    def bounds(self):
        first, _sep, last = (self.value() or "").partition("_")
        first, last = parse_uuid(first), parse_uuid(last)
        return (first, last) if first and last else None

    def lookups(self, request, model_admin):
        if not self.value():
            return []
        return [(self.value(), _("this batch") if self.bounds() else _("(invalid)"))]

    def queryset(self, request, queryset):
        bounds = self.bounds()
        if bounds is None:
            return queryset.none() if self.value() else queryset
        return queryset.filter(pk__range=bounds, source=Call.Source.REPLAY,
                               replay_of__isnull=False)


class ReplayMixin:
    """Replay (one, edited, or in bulk) and compare views of the call admin."""

    bulk_replay_max = BULK_REPLAY_MAX

    def get_list_filter(self, request):
        return (*super().get_list_filter(request), BatchFilter)

    # -- one call ------------------------------------------------------------------------

    def _check_replay(self, request, call):
        if not self.has_replay_permission(request, call):
            raise PermissionDenied

    def replay_view(self, request, call_id):
        """Confirm, then replay one call (optionally against another model)."""
        call = self.get_call_or_404(request, call_id)
        self._check_replay(request, call)
        problem = replay_problem(call)
        form = ReplayForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and problem is None and form.is_valid():
            model = form.cleaned_data["model"].strip()
            overrides = {"model": model} if model and takes_model(call) else None
            try:
                replay = submit_replay(call, user=request.user, overrides=overrides)
            except ReplayError as exc:
                problem = str(exc)
            else:
                self.message_replayed(request, call, replay)
                return HttpResponseRedirect(self.call_url(replay))
        return self.render_page(request, "replay_confirm.html", self.page_context(
            request, call, title=_("Replay this call?"), form=form, problem=problem,
            side_effects=has_side_effects(call.operation), takes_model=takes_model(call),
            known_models=self.known_models(),
        ))

    def replay_edit_view(self, request, call_id):
        """The original request in a form: change the model or any parameter, then send."""
        call = self.get_call_or_404(request, call_id)
        self._check_replay(request, call)
        problem = replay_problem(call)
        body = call.request_body if isinstance(call.request_body, dict) else {}
        initial = {"model": body.get("model", ""),
                   "body": json.dumps(body, indent=2, ensure_ascii=False)}
        if request.method == "POST":
            form = ReplayEditForm(request.POST, request.FILES, call=call)
        else:
            form = ReplayEditForm(initial=initial, call=call)
        if request.method == "POST" and problem is None and form.is_valid():
            try:
                replay = submit_replay(call, user=request.user, body=form.cleaned_data["body"],
                                       files=form.cleaned_data.get("files"))
            except ReplayError as exc:
                problem = str(exc)
            else:
                self.message_replayed(request, call, replay)
                return HttpResponseRedirect(self.call_url(replay))
        inputs = [render.artifact_view(a) for a in call.artifacts.filter(
            role__in=Artifact.INPUT_ROLES)]
        return self.render_page(request, "replay_edit.html", self.page_context(
            request, call, title=_("Edit and replay"), form=form, problem=problem,
            input_artifacts=inputs, side_effects=has_side_effects(call.operation),
            known_models=self.known_models(),
        ))

    def message_replayed(self, request, call, replay):
        self.message_user(request, format_html(
            _('Replay of {} queued as <a href="{}">{}</a>; a worker will run it.'),
            call.pk, self.call_url(replay), replay.pk), messages.SUCCESS)

    def call_url(self, call):
        return reverse(self.url_name("change"), args=[call.pk])

    def known_models(self):
        from openai_django import upstreams
        from openai_django.pricing import price_table

        names = set(known_models())
        names.update(p for p in price_table() if not p.endswith("*"))
        names.update(upstreams.model_names())  # what UPSTREAMS serve by name
        return sorted(n for n in names if n)

    # -- bulk ----------------------------------------------------------------------------

    @admin.action(description=_("Replay selected calls (optionally against another model)"),
                  permissions=["replay"])
    def replay_selected(self, request, queryset):
        ids = list(queryset.order_by("-created").values_list("pk", flat=True)
                   [: self.bulk_replay_max + 1])
        if len(ids) > self.bulk_replay_max:
            self.message_user(request, _("Select at most %(max)d calls to replay at once (narrow "
                                         "the list with filters).") % {
                                             "max": self.bulk_replay_max}, messages.ERROR)
            return None
        calls = Call.objects.filter(pk__in=ids).defer("response_body", "stream_events",
                                                      "payload", "response_text")
        form = ReplayForm(request.POST if request.POST.get("post") == "yes" else None)
        if request.POST.get("post") == "yes" and form.is_valid():
            return self.perform_bulk_replay(request, calls, form.cleaned_data["model"].strip())
        breakdown = list(calls.order_by().values("operation", "model")
                         .annotate(n=Count("id")).order_by("-n")[:50])
        not_replayable = calls.filter(Q(metadata_only=True) | Q(body_purged_at__isnull=False))
        select_across = request.POST.get("select_across") == "1"
        return self.render_page(request, "replay_bulk.html", self.page_context(
            request, None, title=_("Replay %(n)d calls?") % {"n": len(ids)},
            count=len(ids), breakdown=breakdown, form=form,
            not_replayable=not_replayable.count(),
            side_effects=any(map(has_side_effects, calls.order_by().values_list(
                "operation", flat=True).distinct())),
            selected=ids[:1] if select_across else ids, select_across=select_across,
            action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
            known_models=self.known_models(),
        ))

    def perform_bulk_replay(self, request, calls, model):
        """Submit one replay per call in one transaction (each is queued on commit)."""
        made, skipped = [], []
        with transaction.atomic():
            # Bodies kept apart (models.RequestBody) are read in one query, not one a call.
            for call in (calls.select_related("user", "api_key").prefetch_related("request_body")
                         .order_by("created")):
                overrides = None
                if model:
                    if not takes_model(call):
                        skipped.append((call, _("takes no model")))
                        continue
                    overrides = {"model": model}
                try:
                    made.append(submit_replay(call, user=request.user, overrides=overrides))
                except ReplayError as exc:
                    skipped.append((call, str(exc)))
        if made:
            ids = sorted(c.pk for c in made)
            batch = f"{ids[0]}_{ids[-1]}"
            report = reverse(self.url_name("compare_report")) + f"?batch={batch}"
            listing = reverse(self.url_name("changelist")) + f"?batch={batch}"
            self.message_user(request, format_html(
                _('{} replays queued{}. Follow them in <a href="{}">the list</a> and '
                  '<a href="{}">compare them with their originals</a>.'),
                len(made), format_html(_(" against {}"), model) if model else "",
                listing, report), messages.SUCCESS)
        if skipped:
            reasons = "; ".join(f"{c.pk}: {why}" for c, why in skipped[:5])
            self.message_user(request, ngettext(
                "%(n)d call was not replayed (%(why)s).",
                "%(n)d calls were not replayed (%(why)s).", len(skipped)) % {
                    "n": len(skipped), "why": reasons + ("…" if len(skipped) > 5 else "")},
                messages.WARNING)
        if made:
            return HttpResponseRedirect(listing)
        return None

    # -- compare -------------------------------------------------------------------------

    def compare_view(self, request, call_id):
        """A call beside another: a replay beside its original by default."""
        call = self.get_call_or_404(request, call_id)
        other_id = parse_uuid(request.GET.get("with", ""))
        if other_id is not None:
            a, b = self.get_call_or_404(request, other_id), call
        elif call.replay_of_id:
            a, b = self.get_call_or_404(request, call.replay_of_id), call
        else:
            latest = call.replays.order_by("-created").first()
            if latest is None:
                self.message_user(request, _("This call has no replay to compare it with."),
                                  messages.WARNING)
                return HttpResponseRedirect(self.call_url(call))
            a, b = call, latest
        text_a, text_b = render.comparable_text(a), render.comparable_text(b)
        segments, ratio = render.word_diff(text_a, text_b)
        images = []
        for side in (a, b):
            images.append([render.artifact_view(x) for x in side.artifacts.filter(
                role=Artifact.Role.GENERATED_IMAGE).order_by("index")])
        def delta(x, y, fmt=str):
            if x is None or y is None:
                return ""
            diff = y - x
            sign = "+" if diff > 0 else ("−" if diff < 0 else "±")
            return f"{sign}{fmt(abs(diff))}"

        metrics = [
            (_("model"), a.model or "—", b.model or "—", ""),
            (_("status"), a.get_status_display(), b.get_status_display(), ""),
            (_("HTTP status"), a.response_status or "—", b.response_status or "—", ""),
            (_("prompt tokens"), a.prompt_tokens, b.prompt_tokens,
             delta(a.prompt_tokens, b.prompt_tokens)),
            (_("cached tokens"), format_tokens(a.cached_tokens), format_tokens(b.cached_tokens),
             delta(a.cached_tokens, b.cached_tokens)),
            (_("completion tokens"), a.completion_tokens, b.completion_tokens,
             delta(a.completion_tokens, b.completion_tokens)),
            (_("reasoning tokens"), format_tokens(a.reasoning_tokens),
             format_tokens(b.reasoning_tokens), delta(a.reasoning_tokens, b.reasoning_tokens)),
            (_("total tokens"), a.total_tokens, b.total_tokens,
             delta(a.total_tokens, b.total_tokens)),
            (_("latency"), format_ms(a.latency_ms), format_ms(b.latency_ms),
             delta(a.latency_ms, b.latency_ms, format_ms)),
            (_("upstream latency"), format_ms(a.upstream_latency_ms),
             format_ms(b.upstream_latency_ms),
             delta(a.upstream_latency_ms, b.upstream_latency_ms, format_ms)),
            (_("estimated cost"), format_cost(a.cost_usd), format_cost(b.cost_usd),
             delta(a.cost_usd, b.cost_usd, format_cost)),
        ]
        return self.render_page(request, "compare.html", self.page_context(
            request, b, title=_("Compare calls"), a=a, b=b, metrics=metrics,
            segments=segments, similarity=f"{ratio * 100:.0f}", text_a=text_a, text_b=text_b,
            changes=render.parameter_changes(a, b), images=images,
            refresh=not (a.is_finished and b.is_finished),
        ))

    @admin.action(description=_("Compare selected replays with their originals"))
    def compare_selected(self, request, queryset):
        ids = list(queryset.filter(replay_of__isnull=False).order_by("pk")
                   .values_list("pk", flat=True)[: self.bulk_replay_max])
        if not ids:
            self.message_user(request, _("None of the selected calls is a replay."),
                              messages.WARNING)
            return None
        url = reverse(self.url_name("compare_report")) + f"?batch={ids[0]}_{ids[-1]}"
        if len(ids) == 1:
            url = reverse(self.url_name("compare"), args=[ids[0]])
        return HttpResponseRedirect(url)

    def compare_report_view(self, request):
        """Replays beside their originals, in aggregate per model pair and pair by pair: the
        replays of the list's current filters (e.g. one bulk replay batch)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        query = request.GET.copy()
        page_number = query.pop("p", [None])[-1]
        request.GET = query  # the list's filters, without this report's page
        replays = self.filtered_queryset(request).filter(replay_of__isnull=False)
        groups = list(
            replays.order_by().values("replay_of__model", "model").annotate(
                pairs=Count("id"),
                failed_a=Count("id", filter=Q(replay_of__status=Call.Status.FAILED)),
                failed_b=Count("id", filter=Q(status=Call.Status.FAILED)),
                pending=Count("id", filter=~Q(status__in=Call.Status.finished())),
                tokens_a=Sum("replay_of__total_tokens"), tokens_b=Sum("total_tokens"),
                cost_a=Sum("replay_of__cost_usd"), cost_b=Sum("cost_usd"),
                latency_a=Avg("replay_of__latency_ms"), latency_b=Avg("latency_ms"),
            ).order_by("-pairs")[:50]
        )
        for group in groups:
            group["latency_a"] = format_ms(group["latency_a"])
            group["latency_b"] = format_ms(group["latency_b"])
            group["cost_a_display"] = format_cost(group["cost_a"])
            group["cost_b_display"] = format_cost(group["cost_b"])
        paginator = LookaheadPaginator(
            replays.select_related(None).select_related("replay_of").defer(None).only(
                *COMPARED_FIELDS, *(f"replay_of__{name}" for name in COMPARED_FIELDS),
            ).order_by("-created"), 100, page_hint=page_number)
        page = paginator.get_page(page_number)
        pairs = []
        for replay in page.object_list:
            original = replay.replay_of
            pairs.append({
                "replay": replay, "original": original,
                "similarity": similar(original, replay) if replay.is_finished else "",
                "latency_a": format_ms(original.latency_ms),
                "latency_b": format_ms(replay.latency_ms),
                "cost_a": format_cost(original.cost_usd), "cost_b": format_cost(replay.cost_usd),
            })
        return self.render_page(request, "compare_report.html", self.page_context(
            request, None, title=_("Replays compared with their originals"), groups=groups,
            pairs=pairs, page=page, paginator=paginator, query=query.urlencode(),
            changelist_url=reverse(self.url_name("changelist")) + (
                f"?{query.urlencode()}" if query else ""),
            refresh=any(not p["replay"].is_finished for p in pairs),
        ))
