"""The call log in the admin: a list that stays fast at a million rows, and a page made for reading.

The list never counts the table (:mod:`.pagination`), loads users and keys with the page
(``list_select_related``), defers the bodies it does not show, filters only on indexed columns
(:mod:`.filters`) and sorts only by date. The call page is read-only and shows each kind of call
the way it happened: a conversation, prompt and text, images, audio with its transcript,
vectors summarised, files and fine-tunes as tables, and the raw JSON folded away.
"""

import json
import logging
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef
from django.http import Http404, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from openai_django.admin import render
from openai_django.admin.export import ExportMixin
from openai_django.admin.filters import (
    HasErrorFilter,
    KeyFilter,
    KindFilter,
    ModelFilter,
    ObjectFilter,
    OperationFilter,
    ReplayFilter,
    StatusFilter,
    UserFilter,
    operation_label,
    parse_uuid,
)
from openai_django.admin.formatting import choice_label, format_cost, format_ms, user_label
from openai_django.admin.pagination import LookaheadPaginator
from openai_django.admin.replay import ReplayMixin
from openai_django.admin.tagging import FeedbackFilter, SessionFilter, TagFilter, TaggingMixin
from openai_django.admin.upstreams import UpstreamFilter, UpstreamsMixin
from openai_django.admin.usage import UsageMixin
from openai_django.models import Artifact, Call

logger = logging.getLogger("openai_django.admin")

# Columns the list never shows: not read for a changelist page (a few KB each, 100 rows a page).
HEAVY_FIELDS = ("request_body", "response_body", "stream_events", "payload", "response_text",
                "output_text", "request_headers", "response_headers", "attempts", "error",
                "metadata")

ABOUT_MAX = 20  # other calls about the same upstream object, on a call's page
LINKS_MAX = 12  # linked objects shown (a fine-tune may name many result files)
LINKED_CALLS_MAX = 5  # calls shown per linked object

STATUS_COLOURS = {
    Call.Status.QUEUED: "queued",
    Call.Status.RUNNING: "running",
    Call.Status.SUCCEEDED: "ok",
    Call.Status.FAILED: "failed",
    Call.Status.CANCELLED: "cancelled",
}


class CallChangeList(ChangeList):
    """The changelist's queryset without the bodies (the list shows none of them)."""

    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*HEAVY_FIELDS)

    def get_results(self, request):
        if getattr(request, "od_queryset_only", False):
            # Export and the replay report need the filtered queryset, not a page of it.
            self.result_count, self.full_result_count, self.result_list = 0, None, []
            self.can_show_all, self.multi_page, self.show_admin_actions = False, False, False
            self.show_full_result_count = False
            return
        super().get_results(request)
        complete = getattr(self.paginator, "complete_rows", None)
        if complete is not None and not self.multi_page:
            # Django would run the query again for a list that fits on one page.
            self.result_list = complete


class CallAdmin(TaggingMixin, ReplayMixin, UsageMixin, ExportMixin, UpstreamsMixin,
               admin.ModelAdmin):
    """Read-only admin for the call log, with replay, compare, usage and export views."""

    list_display = ("created_display", "operation_display", "model_display", "user_display",
                    "key_display", "status_display", "http_display", "latency_display",
                    "tokens_display", "cost_display", "markers", "tags_display",
                    "prompt_display")
    list_display_links = ("created_display",)
    list_select_related = ("user", "api_key")
    list_filter = (KindFilter, OperationFilter, ModelFilter, StatusFilter, UserFilter, KeyFilter,
                   ObjectFilter, HasErrorFilter, ReplayFilter, TagFilter, SessionFilter,
                   FeedbackFilter, UpstreamFilter)
    list_per_page = 100
    list_max_show_all = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ("created_display",)
    date_hierarchy = "created"
    search_fields = ("prompt_preview",)
    search_help_text = _("A call id or upstream request id finds that call; any other text "
                         "searches the prompts.")
    paginator = LookaheadPaginator
    ordering = ("-created",)
    change_list_template = "openai_django/admin/call_changelist.html"
    recompute_max = 200_000
    actions = ("replay_selected", "compare_selected", "export_jsonl", "export_csv",
               "recompute_costs")

    # -- permissions: the log is read-only ----------------------------------------------------

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Calls leave the log through the retention purge, never one by one from the admin.
        return False

    def has_replay_permission(self, request, obj=None):
        opts = self.opts
        return (self.has_view_permission(request, obj)
                and request.user.has_perm(f"{opts.app_label}.replay_call"))

    # -- list ------------------------------------------------------------------------------

    def get_changelist(self, request, **kwargs):
        return CallChangeList

    def filtered_queryset(self, request):
        """The calls the list shows for ``request``'s filters, search and dates (all of them,
        not a page), without reading or counting any."""
        request.od_queryset_only = True
        try:
            changelist = self.get_changelist_instance(request)
            return changelist.get_queryset(request)
        finally:
            request.od_queryset_only = False

    def get_paginator(self, request, queryset, per_page, orphans=0,
                      allow_empty_first_page=True):
        from django.contrib.admin.views.main import PAGE_VAR

        return self.paginator(queryset, per_page, orphans, allow_empty_first_page,
                              page_hint=request.GET.get(PAGE_VAR, 1))

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "api_key")

    @admin.display(description=_("created"), ordering="created")
    def created_display(self, call):
        return timezone.localtime(call.created).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description=_("operation"))
    def operation_display(self, call):
        return format_html('<span title="{}">{}</span>', call.operation,
                           operation_label(call.operation))

    @admin.display(description=_("model"))
    def model_display(self, call):
        return call.model or "—"

    @admin.display(description=_("user"))
    def user_display(self, call):
        return user_label(call.user) or "—"

    @admin.display(description=_("key"))
    def key_display(self, call):
        key = call.api_key
        if key is None:
            return "—"
        return format_html('<span class="od-key" title="{}">{}</span>', key.name, key.masked)

    @admin.display(description=_("status"))
    def status_display(self, call):
        # The enums' labels, not get_FOO_display(): that builds the dict of every (translated)
        # choice for each row, which is a tenth of the list's time.
        return format_html('<span class="od-status od-status-{}" title="{}">{}</span>',
                           STATUS_COLOURS.get(call.status, ""), choice_label(Call.Outcome,
                                                                             call.outcome),
                           choice_label(Call.Status, call.status))

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, call):
        """Django's selection box, written directly: its widget renders a template per row
        (a fifth of the list's time)."""
        return format_html('<input type="checkbox" name="{}" value="{}" class="action-select" '
                           'aria-label="{}">', helpers.ACTION_CHECKBOX_NAME, call.pk,
                           _("Select this object for an action - %s") % call)

    @admin.display(description=_("HTTP"))
    def http_display(self, call):
        return call.response_status or "—"

    @admin.display(description=_("latency"))
    def latency_display(self, call):
        return format_ms(call.latency_ms)

    @admin.display(description=_("tokens"))
    def tokens_display(self, call):
        if call.total_tokens is None:
            return "—"
        hint = ""
        if call.cached_tokens:
            hint += f" ({call.cached_tokens:,} cached)"
        hint += f" + {call.completion_tokens or 0:,} completion"
        if call.reasoning_tokens:
            hint += f" ({call.reasoning_tokens:,} reasoning)"
        return format_html('<span title="{} prompt{}">{}</span>', f"{call.prompt_tokens or 0:,}",
                           hint, f"{call.total_tokens:,}")

    @admin.display(description=_("est. cost"))
    def cost_display(self, call):
        return format_cost(call.cost_usd)

    @admin.display(description="")
    def markers(self, call):
        marks = []
        if call.stream:
            marks.append(("stream", _("stream"), _("Streamed (server-sent events)")))
        if call.mode == Call.Mode.ASYNC:
            marks.append(("async", _("bg"), _("Background call (Celery)")))
        if call.replay_of_id:
            marks.append(("replay", _("replay"), _("Replay of %s") % call.replay_of_id))
        if call.metadata_only:
            marks.append(("meta", _("meta"), _("Metadata only: no bodies recorded")))
        if not marks:
            return mark_safe("<span></span>")  # blank, not the admin's "-" for empty values
        return format_html_join("", '<span class="od-mark od-mark-{}" title="{}">{}</span>',
                                ((cls, title, label) for cls, label, title in marks))

    @admin.display(description=_("prompt"))
    def prompt_display(self, call):
        return Truncator(call.prompt_preview).chars(60) if call.prompt_preview else ""

    def get_search_results(self, request, queryset, search_term):
        """Exact ids first (indexed), then the prompt text.

        A call id finds that call and its replays; an upstream request id finds its call;
        anything else is looked for in the prompt previews (a scan, narrowed by the filters
        and the date range in use).
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        call_id = parse_uuid(term)
        if call_id is not None:
            return queryset.filter(pk=call_id) | queryset.filter(replay_of=call_id), False
        if " " not in term and len(term) <= 100:
            by_request_id = queryset.filter(upstream_request_id=term)
            if by_request_id.exists():
                return by_request_id, False
        return queryset.filter(prompt_preview__icontains=term), False

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "usage_url": reverse(f"{self.admin_site.name}:{self._info}_usage"),
            "upstreams_url": reverse(f"{self.admin_site.name}:{self._info}_upstreams"),
            "export_url": reverse(f"{self.admin_site.name}:{self._info}_export"),
            "compare_report_url": reverse(f"{self.admin_site.name}:{self._info}_compare_report"),
            "query_string": request.GET.urlencode(),
        }
        return super().changelist_view(request, extra_context)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_recompute_permission(self, request, obj=None):
        # Costs are the one derived field an admin may rewrite (after the price table changed);
        # the model's own "change" permission says who may, though the log is read-only here.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.action(description=_("Recompute estimated costs from the current price table"),
                  permissions=["recompute"])
    def recompute_costs(self, request, queryset):
        """Confirm, then recompute ``cost_usd`` of the selection (at most
        ``recompute_max`` calls at once) with :func:`openai_django.pricing.estimate_cost`."""
        from openai_django.admin.costs import recompute

        if request.POST.get("post") != "yes":
            count = queryset.order_by().values("created")[: self.recompute_max + 1].count()
            return self.render_page(request, "recompute_confirm.html", self.page_context(
                request, None, title=_("Recompute estimated costs?"), count=count,
                too_many=count > self.recompute_max, limit=self.recompute_max,
                selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                select_across=request.POST.get("select_across") == "1",
                action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
            ))
        checked, changed = recompute(queryset, limit=self.recompute_max)
        from openai_django.admin.usage import forget_cached_usage

        forget_cached_usage()
        self.message_user(request, _("Estimated costs recomputed for %(checked)d calls; "
                                     "%(changed)d changed.") % {"checked": checked,
                                                                "changed": changed},
                          messages.SUCCESS)
        return None

    # -- urls ------------------------------------------------------------------------------

    @property
    def _info(self):
        return f"{self.opts.app_label}_{self.opts.model_name}"

    def url_name(self, name):
        return f"{self.admin_site.name}:{self._info}_{name}"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        info = self._info
        return [
            *self.tagging_urls(),
            path("usage/", wrap(self.usage_view), name=f"{info}_usage"),
            path("upstreams/", wrap(self.upstreams_view), name=f"{info}_upstreams"),
            path("export/", wrap(self.export_view), name=f"{info}_export"),
            path("compare/", wrap(self.compare_report_view), name=f"{info}_compare_report"),
            path("<uuid:call_id>/replay/", wrap(self.replay_view), name=f"{info}_replay"),
            path("<uuid:call_id>/replay/edit/", wrap(self.replay_edit_view),
                 name=f"{info}_replay_edit"),
            path("<uuid:call_id>/compare/", wrap(self.compare_view), name=f"{info}_compare"),
            path("<uuid:call_id>/artifacts/<uuid:artifact_id>/", wrap(self.artifact_view),
                 name=f"{info}_artifact"),
            path("<uuid:call_id>/request.json", wrap(self.request_json_view),
                 name=f"{info}_request_json"),
            path("<uuid:call_id>/response/", wrap(self.response_view), name=f"{info}_response"),
            *super().get_urls(),
        ]

    def get_call_or_404(self, request, call_id, queryset=None):
        queryset = queryset if queryset is not None else self.get_queryset(request)
        call = queryset.filter(pk=call_id).first()
        if call is None:
            raise Http404(_("No call with id %s.") % call_id)
        if not self.has_view_permission(request, call):
            raise PermissionDenied
        return call

    def page_context(self, request, call=None, **extra):
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": call,
            "call": call,
            "has_view_permission": self.has_view_permission(request, call),
            "has_replay_permission": self.has_replay_permission(request, call),
            **extra,
        }

    def render_page(self, request, template, context):
        request.current_app = self.admin_site.name
        return TemplateResponse(request, f"openai_django/admin/{template}", context)

    # -- the call page ---------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        call_id = parse_uuid(unquote(object_id))
        if call_id is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        queryset = self.get_queryset(request).select_related("replay_of")
        call = queryset.filter(pk=call_id).first()
        if call is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, call):
            raise PermissionDenied
        return self.render_page(request, "call_detail.html",
                                self.call_page_context(request, call, extra_context))

    def call_page_context(self, request, call, extra_context=None):
        kind = render.kind_of(call)
        artifacts = [render.artifact_view(a) for a in call.artifacts.all()]
        inputs = [a for a in artifacts if a["is_input"]]
        # Finals first (by index), then the partial images a stream sent on the way.
        generated = sorted((a for a in artifacts
                            if a["obj"].role == a["obj"].Role.GENERATED_IMAGE),
                           key=lambda a: (a["obj"].name.startswith("partial"), a["obj"].index))
        for a in generated:
            a["partial"] = a["obj"].name.startswith("partial")
        replays = list(call.replays.select_related("user").defer(*HEAVY_FIELDS)
                       .order_by("-created")[:51])
        op = call.operation_spec
        context = self.page_context(
            request, call,
            title=f"{operation_label(call.operation)} · {call.model or call.path}",
            subtitle=str(call.pk),
            kind=kind,
            operation_name=operation_label(call.operation),
            operation_spec=op,
            artifacts=artifacts,
            input_artifacts=inputs,
            generated_images=generated,
            audio_inputs=[a for a in inputs if a["is_audio"]],
            generated_audio=[a for a in artifacts
                             if a["obj"].role == a["obj"].Role.GENERATED_AUDIO],
            about=self.calls_about(call),
            linked=self.linked_calls(call),
            replays=replays[:50],
            more_replays=len(replays) > 50,
            user_link=self.user_link(call.user),
            request_pretty=render.pretty(call.request_body),
            response_pretty=render.pretty(call.response_body),
            error_pretty=render.pretty(call.error),
            request_headers_pretty=render.pretty(call.request_headers or None),
            response_headers_pretty=render.pretty(call.response_headers or None),
            attempts_pretty=render.pretty(call.attempts or None),
            stream_event_count=len(call.stream_events or ()),
            stream_events_shown=(call.stream_events or [])[:500],
            request_fields=render.request_fields(call),
            has_response_download=call.is_finished and not call.metadata_only
            and not call.body_purged_at,
            refresh=not call.is_finished,
            editable=op is not None and (op.is_json or op.is_multipart),
            key_calls_url=(reverse(f"{self.admin_site.name}:{self._info}_changelist")
                           + f"?key={call.api_key_id}") if call.api_key_id else "",
            **self.tagging_context(request, call),
            **(extra_context or {}),
        )
        if kind == "chat":
            context["conversation"] = render.conversation(call)
            context["replies"] = render.chat_replies(call)
            context["tools"] = render.tools_offered(call)
        elif kind in ("completion", "edit"):
            body = call.request_body if isinstance(call.request_body, dict) else {}
            context["prompts"] = render.prompts(call)
            context["instruction"] = body.get("instruction") or ""
            context["edit_input"] = body.get("input") or ""
            context["choices"] = render.text_choices(call)
        elif kind == "image":
            body = call.request_body if isinstance(call.request_body, dict) else {}
            response = call.response_body if isinstance(call.response_body, dict) else {}
            context["image_prompt"] = body.get("prompt") or ""
            context["revised_prompts"] = [item.get("revised_prompt") for item in
                                          response.get("data") or ()
                                          if isinstance(item, dict) and item.get("revised_prompt")]
            context["failed_images"] = [a for a in artifacts if a["obj"].error]
        elif kind == "responses":
            context["responses"] = render.responses_view(call)
            context["tools"] = context["responses"]["tools"]
            context["request_fields"] = render.request_fields(
                call, skip=("input", "instructions", "tools"))
        elif kind == "speech":
            context["speech"] = render.speech_request(call)
            context["request_fields"] = render.request_fields(
                call, skip=("input", "voice", "instructions"))
        elif kind == "audio":
            context["transcript"] = render.transcript(call)
        elif kind == "embedding":
            context["inputs"] = render.embedding_inputs(call)
            context["vectors"] = render.embeddings(call)
        elif kind == "moderation":
            context["moderations"] = render.moderation_results(call)
        else:
            context["objects"] = render.object_tables(call)
        return context

    def calls_about(self, call):
        """The other calls about this call's upstream object, newest first (at most
        ``ABOUT_MAX``; one more is read to say there are more)."""
        if not call.object_id:
            return None
        found = list(Call.objects.about(call.object_id).exclude(pk=call.pk)
                     .defer(*HEAVY_FIELDS).order_by("-created")[:ABOUT_MAX + 1])
        return {"object_id": call.object_id, "calls": found[:ABOUT_MAX],
                "more": len(found) > ABOUT_MAX,
                "url": reverse(self.url_name("changelist")) + "?" + urlencode(
                    {"object": call.object_id})}

    def linked_calls(self, call):
        """Each upstream object the answer names (by role) and the calls that created,
        uploaded or downloaded it, newest first: a batch's input and output files, a job's
        training file, the response a response continues."""
        links = call.links if isinstance(call.links, dict) else {}
        rows = []
        for role, object_id in list(links.items())[:LINKS_MAX]:
            if not isinstance(object_id, str) or not object_id:
                continue
            holds_file = Artifact.objects.filter(
                call=OuterRef("pk"), role__in=(Artifact.Role.UPLOAD, Artifact.Role.FILE_CONTENT),
                purged_at__isnull=True).exclude(file="")
            calls = list(Call.objects.about(object_id).exclude(pk=call.pk)
                         .defer(*HEAVY_FIELDS).annotate(holds_file=Exists(holds_file))
                         .order_by("-created")[:LINKED_CALLS_MAX])
            rows.append({"role": role.replace("_", " "), "object_id": object_id,
                         "calls": calls})
        return rows

    def user_link(self, user):
        if user is None:
            return ""
        opts = user._meta
        if not self.admin_site.is_registered(type(user)):
            return ""
        try:
            return reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                           args=[user.pk])
        except Exception:
            return ""

    # -- artifacts and bodies --------------------------------------------------------------

    def artifact_view(self, request, call_id, artifact_id):
        """An artifact's bytes: as an attachment, or inline for images and audio (only those
        types: an SVG or HTML file shown inline could run script in the admin's origin)."""
        from openai_django.storage import artifact_response

        call = self.get_call_or_404(request, call_id, Call.objects.only("id"))
        artifact = call.artifacts.filter(pk=artifact_id).first()
        if artifact is None or not artifact.file or artifact.purged_at:
            raise Http404(_("This artifact is not stored."))
        view = render.artifact_view(artifact)
        inline = request.GET.get("inline") == "1" and (view["is_image"] or view["is_audio"])
        response = artifact_response(artifact, as_attachment=not inline)
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    def request_json_view(self, request, call_id):
        call = self.get_call_or_404(request, call_id)
        if call.request_body is None:
            raise Http404(_("No request body was recorded."))
        response = HttpResponse(json.dumps(call.request_body, indent=2, ensure_ascii=False),
                                content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="request-{call.pk}.json"'
        response["X-Content-Type-Options"] = "nosniff"
        return response

    def response_view(self, request, call_id):
        """The upstream's answer as it was returned (from the response artifact when the body
        was compacted), always as an attachment."""
        from openai_django.errors import OpenAIDjangoError
        from openai_django.views import recorded_response

        call = self.get_call_or_404(request, call_id)
        try:
            response = recorded_response(call)
        except OpenAIDjangoError as exc:
            raise Http404(exc.message) from None
        response.status_code = 200
        extension = "json" if "json" in (call.response_content_type or "json") else "txt"
        if call.stream_events is not None and call.response_body is None:
            extension = "txt"
        response["Content-Disposition"] = f'attachment; filename="response-{call.pk}.{extension}"'
        response["X-Content-Type-Options"] = "nosniff"
        return response
