"""Export calls as JSONL or CSV, streamed: a million rows never sit in memory.

The rows are read with ``QuerySet.iterator(chunk_size=...)`` (a server-side cursor on
PostgreSQL) and written out as they come, so memory stays flat whatever the selection. The
export covers what the list shows: the changelist's filters, search and dates (the "Export"
links), or the rows selected on the list (the actions).
"""

import csv
import io
import logging
from contextlib import nullcontext

import orjson
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import connections, transaction
from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from openai_django.serializers import call_to_dict
from openai_django.tagging import feedback_of

logger = logging.getLogger("openai_django.admin")

CHUNK_SIZE = 2000
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = ["id", "created", "finished_at", "operation", "model", "user", "api_key",
               "status", "outcome", "mode", "source", "stream", "http_status", "latency_ms",
               "upstream_latency_ms", "first_byte_ms", "prompt_tokens", "completion_tokens",
               "total_tokens", "cost_usd", "replay_of", "upstream_request_id", "prompt",
               "output_text", "error", "tags", "session", "metadata", "feedback_score",
               "feedback_comment", "upstream", "upstream_attempts"]
# Never exported: the pending payload is the request as it is to be sent (unredacted).
NOT_EXPORTED = ("payload",)
CSV_DEFERRED = ("payload", "request_body", "response_body", "stream_events", "response_text",
                "request_headers", "response_headers", "attempts")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _iso(value):
    return value.isoformat() if value else ""


def _user(call):
    return call.user.get_username() if call.user_id and call.user is not None else ""


def _attempts(attempts):
    """A call's upstream attempts in one cell: "a 429 -> b 200" (empty with one upstream)."""
    return " -> ".join(f"{a.get('upstream', '?')} {a.get('status') or a.get('outcome') or ''}"
                       .strip() for a in attempts or ())


def _csv_cell(value):
    """Text as a spreadsheet will not run it: a cell starting like a formula gets a quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text.startswith(FORMULA_START):
        return "'" + text
    return text


def streamed(queryset):
    """The rows of ``queryset``, read a chunk at a time.

    On PostgreSQL the server-side cursor is opened inside a transaction: outside one Django
    declares it ``WITH HOLD``, and PostgreSQL then materialises the whole result before the
    first row (seconds, and gigabytes, for a million calls). Elsewhere no transaction is
    opened: on SQLite it would take the write lock for the length of the download.
    """
    connection = connections[queryset.db]
    context = (transaction.atomic(using=queryset.db) if connection.vendor == "postgresql"
               else nullcontext())
    with context:
        yield from queryset.iterator(chunk_size=CHUNK_SIZE)


def jsonl_lines(queryset):
    calls = (queryset.defer(None).defer(*NOT_EXPORTED)
             .select_related("user", "api_key", "feedback")
             .prefetch_related("artifacts", "request_body"))
    for call in streamed(calls):
        record = call_to_dict(call)
        record["user"] = _user(call)
        record["api_key"] = call.api_key.masked if call.api_key_id and call.api_key else None
        record["created_at"] = _iso(call.created)
        yield orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def csv_lines(queryset):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    calls = (queryset.defer(None).defer(*CSV_DEFERRED)
             .select_related("user", "api_key", "feedback"))
    for call in streamed(calls):
        buffer.seek(0)
        buffer.truncate()
        error = call.error.get("message", "") if isinstance(call.error, dict) else ""
        feedback = feedback_of(call)
        writer.writerow([_csv_cell(v) for v in (
            call.pk, _iso(call.created), _iso(call.finished_at), call.operation, call.model,
            _user(call), call.api_key.masked if call.api_key_id and call.api_key else "",
            call.status, call.outcome, call.mode, call.source, call.stream,
            call.response_status, call.latency_ms, call.upstream_latency_ms,
            call.first_byte_ms, call.prompt_tokens, call.completion_tokens, call.total_tokens,
            call.cost_usd, call.replay_of_id or "", call.upstream_request_id,
            call.prompt_preview, call.output_text, error, ",".join(call.tags or ()),
            call.session, orjson.dumps(call.metadata).decode() if call.metadata else "",
            feedback.score if feedback is not None else "",
            feedback.comment if feedback is not None else "",
            call.upstream, _attempts(call.upstream_attempts),
        )])
        yield buffer.getvalue().encode()


def export_response(queryset, fmt):
    if fmt not in FORMATS:
        raise Http404(_("Unknown export format."))
    lines = jsonl_lines(queryset) if fmt == "jsonl" else csv_lines(queryset)
    response = StreamingHttpResponse(lines, content_type=FORMATS[fmt])
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="calls-{stamp}.{fmt}"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    # Proxies must not hold the whole export back before sending it.
    response["X-Accel-Buffering"] = "no"
    return response


class ExportMixin:
    def export_view(self, request):
        """The list's current selection (filters, search, dates) as ``?format=jsonl|csv``."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        fmt = request.GET.get("format", "jsonl")
        if fmt not in FORMATS:
            raise Http404(_("Unknown export format."))
        query = request.GET.copy()
        query.pop("format", None)
        request.GET = query  # the changelist reads the filters from here
        queryset = self.filtered_queryset(request)
        logger.info("Export of calls as %s by %s: %s", fmt, request.user, query.urlencode())
        return export_response(queryset, fmt)

    @admin.action(description=_("Export selected calls as JSONL"), permissions=["view"])
    def export_jsonl(self, request, queryset):
        return export_response(queryset, "jsonl")

    @admin.action(description=_("Export selected calls as CSV"), permissions=["view"])
    def export_csv(self, request, queryset):
        return export_response(queryset, "csv")
