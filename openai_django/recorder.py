"""The only code that writes calls and artifacts: start, finish, fail.

A call's row is written before the upstream is asked (so nothing is lost if the process dies or
the upstream never answers), and finished exactly once in every outcome.
"""

import base64
import logging
import time

import orjson
from django.db import DatabaseError, connections, models, router, transaction
from django.db.models import signals as model_signals
from django.utils import timezone

from openai_django import signals, writer
from openai_django.artifacts import FetchRefused, failed_artifact, fetch_image, save_artifact
from openai_django.conf import app_settings
from openai_django.models import Artifact, Call
from openai_django.upstream import SSEParser

logger = logging.getLogger("openai_django.recorder")

IMAGE_OPERATIONS = {"createImage", "createImageEdit", "createImageVariation"}
AUDIO_OPERATIONS = {"createTranscription", "createTranslation"}
# A response larger than this is kept as an artifact (exactly as returned) and the row holds a
# compact copy, so million-row tables do not carry megabytes of base64 or embedding floats.
INLINE_RESPONSE_MAX_BYTES = 256 * 1024
TRANSCRIPT_FORMATS = {"srt": ("srt", "application/x-subrip"), "vtt": ("vtt", "text/vtt")}
FILE_ROLES = {"image": Artifact.Role.IMAGE, "mask": Artifact.Role.MASK}


_statements = {}  # (vendor, kind, fields) -> SQL


def _statement(conn, kind, fields):
    key = (conn.vendor, kind, fields)
    sql = _statements.get(key)
    if sql is None:
        meta = Call._meta
        quote = conn.ops.quote_name
        columns = [meta.get_field(name).column for name in fields]
        if kind == "insert":
            sql = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(map(quote, columns))}) "
                   f"VALUES ({', '.join(['%s'] * len(columns))})")
        else:
            sql = (f"UPDATE {quote(meta.db_table)} SET "
                   f"{', '.join(quote(c) + ' = %s' for c in columns)} "
                   f"WHERE {quote(meta.pk.column)} = %s")
        _statements[key] = sql
    return sql


_INSERT_FIELDS = None
_converters = {}  # (vendor, field name) -> callable(value) -> database value

# Fields whose database value is the Python value itself when the recorder set it (a str, an
# int, a float, a bool or None): binding them skips the ORM's per-field prep (a third of the
# cost of a save on the hot path).
_PLAIN_FIELDS = (models.CharField, models.TextField, models.IntegerField, models.FloatField,
                 models.BooleanField)


def _converter(conn, field):
    key = (conn.vendor, field.name)
    convert = _converters.get(key)
    if convert is None:
        plain = (isinstance(field, _PLAIN_FIELDS) and not field.choices) or (
            isinstance(field, models.CharField) and field.choices)
        if field.is_relation:
            target = field.target_field
            plain = isinstance(target, (models.AutoField, models.BigAutoField,
                                        models.IntegerField))
        if plain:
            def convert(value, field=field):
                if value is None or type(value) in (str, int, float, bool):
                    return value
                return field.get_db_prep_save(value, connection=conn)
        else:
            def convert(value, field=field, conn=conn):
                return field.get_db_prep_save(value, connection=conn)
        _converters[key] = convert
    return convert


def _bind(conn, fields, call, add):
    """The database values of ``fields`` of ``call``, as the ORM's save would bind them."""
    out = []
    for field in fields:
        value = field.pre_save(call, add)
        out.append(_converter(conn, field)(value))
    return out


def _save_new(call):
    """``call.save(force_insert=True)`` as one prepared statement.

    The ORM's save rebuilds the same 45-column INSERT through its compiler on every call
    (about 0.4 ms on the hot path); this binds the values with each field's own
    ``get_db_prep_save`` (so JSON, UUID and datetime columns are stored exactly as the ORM
    stores them) into SQL built once. Model signals, if a site listens to them, keep the ORM.
    """
    global _INSERT_FIELDS
    if model_signals.pre_save.has_listeners(Call) or model_signals.post_save.has_listeners(Call):
        call.save(force_insert=True)
        return
    if _INSERT_FIELDS is None:
        _INSERT_FIELDS = tuple(f.name for f in Call._meta.local_concrete_fields)
    alias = router.db_for_write(Call, instance=call)
    conn = connections[alias]
    params = _bind(conn, Call._meta.local_concrete_fields, call, True)
    sql = _statement(conn, "insert", _INSERT_FIELDS)
    if app_settings.WRITER and writer.usable(alias):
        writer.get_writer(alias).submit(sql, params, kind="insert")
    else:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
    call._state.adding = False
    call._state.db = alias


def _save_fields(call, names):
    """``call.save(update_fields=names)`` as one prepared statement (see :func:`_save_new`)."""
    if model_signals.pre_save.has_listeners(Call) or model_signals.post_save.has_listeners(Call):
        call.save(update_fields=names)
        return
    alias = call._state.db or router.db_for_write(Call, instance=call)
    conn = connections[alias]
    get = Call._meta.get_field
    fields = [get(name) for name in names]
    params = _bind(conn, fields, call, False)
    params.append(Call._meta.pk.get_db_prep_value(call.pk, conn))
    sql = _statement(conn, "update", tuple(names))
    if app_settings.WRITER and writer.usable(alias):
        writer.get_writer(alias).submit(sql, params, kind="update")
        return
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.rowcount == 0:
            raise DatabaseError("Save with update_fields did not affect any rows.")


def records_bodies(operation_id, api_key=None):
    if not app_settings.RECORD_BODIES:
        return False
    if operation_id in app_settings.METADATA_ONLY_OPERATIONS:
        return False
    return not (api_key is not None and api_key.metadata_only)


def redact(value, call, field):
    hook = app_settings.REDACT
    if hook is None or value is None:
        return value
    result = hook(value, call=call, field=field)
    if field == "prompt" and isinstance(result, str):
        result = result[:300]  # masks may lengthen it; the column holds 300 (an error on PG)
    if result != value:
        call.redacted = True
    return result


def prompt_preview(operation_id, body):
    """The text a person would search for: the last user message, the prompt, the input."""
    if not isinstance(body, dict):
        return ""
    text = None
    if operation_id == "createChatCompletion":
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _content_text(message.get("content"))
                break
    else:
        for key in ("prompt", "instruction", "input", "query", "question"):
            value = body.get(key)
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = value[0]
            if isinstance(value, str):
                text = value
                break
    return (text or "")[:300]


def _content_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _file_role(operation_id, field):
    if operation_id in AUDIO_OPERATIONS:
        return Artifact.Role.AUDIO
    return FILE_ROLES.get(field, Artifact.Role.UPLOAD)


def start(invocation, *, status=Call.Status.RUNNING, keep_payload=False):
    """Write the call (and its input artifacts) before anything is sent upstream."""
    op = invocation.operation
    if not app_settings.RECORD:
        return _unrecorded(invocation, status)
    bodies = records_bodies(op.id, invocation.api_key)
    now = timezone.now()
    call = Call(
        created=now,
        started_at=now if status == Call.Status.RUNNING else None,
        operation=op.id,
        method=op.method,
        path=op.upstream_path(invocation.path_kwargs),
        query=invocation.query[:2048],
        model=op.model_from(invocation.body, invocation.path_kwargs)[:200],
        user=invocation.user,
        api_key=invocation.api_key,
        status=status,
        mode=invocation.mode,
        source=invocation.source,
        stream=invocation.stream,
        request_headers=invocation.recorded_headers(),
        replay_of_id=invocation.replay_of_id,
        idempotency_key=invocation.idempotency_key or "",
        request_hash=invocation.request_hash() if invocation.idempotency_key else "",
        callback=invocation.callback or "",
        metadata_only=not bodies,
    )
    if invocation.target is not None:
        call.target = invocation.target
    if bodies:
        call.request_body = redact(invocation.body, call, "request_body")
        call.prompt_preview = redact(prompt_preview(op.id, invocation.body), call, "prompt")
    if keep_payload:
        call.payload = invocation.payload_bytes()
    has_files = bool(invocation.files) and (bodies or keep_payload)
    if has_files:
        with transaction.atomic():
            _save_new(call)
            for upload in invocation.files:
                save_artifact(call, _file_role(op.id, upload.field), upload.read(),
                              name=upload.name, content_type=upload.content_type,
                              field=upload.field, index=upload.index)
    else:
        _save_new(call)
    return call


def _unrecorded(invocation, status):
    """``RECORD = False``: an unsaved call that only lends its fresh id to ``X-Call-Id``.

    Nothing about it is written, now or when it ends (no row, no artifacts, no signal), so a
    benchmark's "recording off" server does the same auth, validation and forwarding with
    none of the recording work.
    """
    op = invocation.operation
    call = Call(operation=op.id, method=op.method, status=status, mode=invocation.mode,
                source=invocation.source, stream=invocation.stream, user=invocation.user)
    call.unrecorded = True
    return call


def _end_unrecorded(call, response, outcome, ok=True):
    call.response_status = response.status if response is not None else call.response_status
    if outcome is None:
        outcome = Call.Outcome.OK if ok else Call.Outcome.UPSTREAM_ERROR
    call.outcome = outcome
    call.status = Call.Status.SUCCEEDED if outcome == Call.Outcome.OK else Call.Status.FAILED
    return call


def mark_running(call):
    call.status = Call.Status.RUNNING
    call.started_at = timezone.now()
    Call.objects.filter(pk=call.pk).update(status=call.status, started_at=call.started_at)


def transition(call, expected, **changes):
    """Apply ``changes`` to the row only if it still matches ``expected`` (compare-and-set).

    Background calls move between states from several processes at once (a redelivered
    message, the sweep, a cancel): a conditional UPDATE lets exactly one of them win without
    locks on any database. On success ``call`` is updated in memory and ``True`` returned.
    """
    if not Call.objects.filter(pk=call.pk, **expected).update(**changes):
        return False
    for name, value in changes.items():
        setattr(call, name, value)
    return True


def _usage(call, usage):
    if isinstance(usage, dict):
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(call, name, value)
        if call.total_tokens is None and call.prompt_tokens is not None:
            call.total_tokens = call.prompt_tokens + (call.completion_tokens or 0)


def output_text_of(operation_id, body):
    if not isinstance(body, dict):
        return ""
    if operation_id in AUDIO_OPERATIONS:
        return body.get("text") or ""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        text = _content_text(message.get("content"))
        if not text and message.get("tool_calls"):
            text = " ".join(
                f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})"
                for c in message["tool_calls"] if isinstance(c, dict)
            )
        return text or ""
    return first.get("text") or ""


def assemble_stream(events):
    """The text a stream carried, and the usage of its last chunk if it had one."""
    parts, usage = [], None
    for payload in events:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("usage"):
            usage = data["usage"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                parts.append(delta.get("content") or "")
            elif isinstance(choice.get("text"), str):
                parts.append(choice["text"])
    return "".join(parts), usage


def _finish_fields(call):
    return ["status", "outcome", "finished_at", "response_status", "response_headers",
            "response_content_type", "response_body", "response_text", "stream_events",
            "output_text", "upstream_request_id", "error", "prompt_tokens", "completion_tokens",
            "total_tokens", "cost_usd", "latency_ms", "upstream_latency_ms", "first_byte_ms",
            "attempts", "attempt_count", "redacted", "payload", "started_at", "stream"]


def _recorded_headers(headers):
    keep = app_settings.RECORD_RESPONSE_HEADERS
    return {name: headers[name] for name in keep if name in headers}


def _timings(call, started, response):
    call.finished_at = timezone.now()
    if started is not None:
        call.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    if response is not None:
        call.first_byte_ms = round(response.first_byte_ms, 3)
        call.upstream_latency_ms = round(response.elapsed_ms or response.first_byte_ms, 3)


def finish(call, response, *, started=None, outcome=None, events=None, stream_done=None,
           error=None):
    """Record the upstream's answer (any status) and its output artifacts."""
    from openai_django.pricing import estimate_cost

    if getattr(call, "unrecorded", False):
        return _end_unrecorded(call, response, outcome, 200 <= response.status < 300)
    bodies = not call.metadata_only
    if events is None and response.is_event_stream and response.body:
        # A stream read whole (a background call or a replay of a streamed request, where no
        # client waits for the events): recorded as the stream it was.
        parser = SSEParser()
        parser.feed(response.body)
        events, stream_done = parser.events, parser.done
        call.stream = True
    call.response_status = response.status
    call.response_headers = _recorded_headers(response.headers)
    call.response_content_type = response.content_type[:100]
    call.upstream_request_id = response.headers.get("x-request-id", "")[:100]
    ok = 200 <= response.status < 300
    body = None
    if events is not None:
        text, usage = assemble_stream(events)
        _usage(call, usage)
        if bodies:
            call.output_text = redact(text, call, "output_text")
            if app_settings.RECORD_STREAM_EVENTS:
                call.stream_events = redact(events, call, "stream_events")
    elif response.body:
        if "json" in call.response_content_type:
            try:
                body = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                body = None
                if ok:
                    ok = False
                    outcome = Call.Outcome.BAD_RESPONSE
                    error = {"message": "The upstream answered a body that is not JSON.",
                             "type": "upstream_error", "code": "upstream_bad_response"}
        if isinstance(body, dict):
            _usage(call, body.get("usage"))
            if not ok and isinstance(body.get("error"), dict):
                error = body["error"]
        if bodies:
            _record_body(call, response, body)
    if error is not None:
        call.error = error
    if outcome is None:
        outcome = Call.Outcome.OK if ok else Call.Outcome.UPSTREAM_ERROR
    if events is not None and outcome == Call.Outcome.OK and not stream_done:
        outcome = Call.Outcome.STREAM_INCOMPLETE
    call.outcome = outcome
    call.status = Call.Status.SUCCEEDED if outcome == Call.Outcome.OK else Call.Status.FAILED
    if bodies and ok and body is not None:
        # Before the final save: whoever sees "succeeded" finds the generated images kept.
        _output_artifacts(call, body)
    _timings(call, started, response)
    call.cost_usd = estimate_cost(call)
    call.payload = None
    _save_fields(call, _finish_fields(call))
    _send_signal(call)
    return call


def _record_body(call, response, body):
    raw = response.body
    content_type = call.response_content_type
    large = len(raw) > INLINE_RESPONSE_MAX_BYTES
    if body is not None:
        if large:
            save_artifact(call, Artifact.Role.RESPONSE, raw, name="response.json",
                          content_type="application/json")
            body = compact(body)
        call.response_body = redact(body, call, "response_body")
        call.output_text = redact(output_text_of(call.operation, body), call, "output_text")
        if call.operation in AUDIO_OPERATIONS and call.output_text:
            save_artifact(call, Artifact.Role.TRANSCRIPT, call.output_text.encode(),
                          name="transcript.txt", content_type="text/plain")
    elif content_type.startswith("text/") and not large:
        text = raw.decode("utf-8", "replace")
        call.response_text = redact(text, call, "response_text")
        if call.operation in AUDIO_OPERATIONS:
            call.output_text = call.response_text
            # The upstream labels srt and vtt as text/plain: the requested format names them.
            requested = (call.request_body or {}).get("response_format")
            ext, kind = TRANSCRIPT_FORMATS.get(requested, ("txt", "text/plain"))
            save_artifact(call, Artifact.Role.TRANSCRIPT, call.response_text.encode(),
                          name=f"transcript.{ext}", content_type=kind)
    else:
        role = (Artifact.Role.FILE_CONTENT if call.operation == "downloadFile"
                else Artifact.Role.RESPONSE)
        name = _filename(response.headers.get("content-disposition", "")) or "content"
        save_artifact(call, role, raw, name=name, content_type=content_type.split(";")[0])


def _filename(disposition):
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            return value.strip('"')
    return ""


def compact(body):
    """A copy of a large JSON response without its bulk: base64 images and embedding vectors
    are replaced by a short description (the full body is kept as an artifact)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return body
    items = []
    for item in body["data"]:
        if isinstance(item, dict):
            item = dict(item)
            if isinstance(item.get("b64_json"), str):
                item["b64_json"] = (
                    f"<{len(item['b64_json'])} base64 characters, kept as an artifact>")
            embedding = item.get("embedding")
            if isinstance(embedding, list):
                item["embedding"] = {"dimensions": len(embedding), "preview": embedding[:8]}
            elif isinstance(embedding, str):
                item["embedding"] = {"base64_chars": len(embedding), "preview": embedding[:32]}
        items.append(item)
    return {**body, "data": items}


def _output_artifacts(call, body):
    if call.operation not in IMAGE_OPERATIONS:
        return
    for index, item in enumerate(body.get("data") or ()):
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("b64_json"), str):
            try:
                data = base64.b64decode(item["b64_json"], validate=False)
            except ValueError as exc:
                failed_artifact(call, Artifact.Role.GENERATED_IMAGE, f"bad base64: {exc}",
                                index=index)
                continue
            save_artifact(call, Artifact.Role.GENERATED_IMAGE, data,
                          name=f"image-{index}.png", content_type="image/png", index=index)
        elif isinstance(item.get("url"), str) and app_settings.FETCH_IMAGE_URLS:
            url = item["url"]
            try:
                data, content_type = fetch_image(url)
            except (FetchRefused, OSError, Exception) as exc:
                logger.warning("Generated image of call %s not fetched: %s", call.pk, exc)
                failed_artifact(call, Artifact.Role.GENERATED_IMAGE, exc, index=index,
                                name=f"image-{index}.png", source_url=url)
                continue
            save_artifact(call, Artifact.Role.GENERATED_IMAGE, data, name=f"image-{index}.png",
                          content_type=content_type, index=index, source_url=url)


def fail(call, exc, *, started=None, outcome=None, response=None, events=None,
         stream_done=False):
    """Finish a call that got no usable answer (unreachable, timeout, broken stream...)."""
    from openai_django.errors import OpenAIDjangoError, UpstreamTimeout

    if getattr(call, "unrecorded", False):
        return _end_unrecorded(call, response, outcome or Call.Outcome.ERROR)
    if outcome is None:
        outcome = Call.Outcome.TIMEOUT if isinstance(exc, UpstreamTimeout) else (
            Call.Outcome.UNREACHABLE if isinstance(exc, OpenAIDjangoError)
            else Call.Outcome.ERROR)
    if isinstance(exc, OpenAIDjangoError):
        call.error = exc.body()["error"]
        if call.response_status is None and response is None:
            call.response_status = exc.status_code
    elif exc is not None:
        call.error = {"message": str(exc)[:2000], "type": "server_error",
                      "code": type(exc).__name__}
    if response is not None and events is not None:
        return finish(call, response, started=started, outcome=outcome, events=events,
                      stream_done=stream_done, error=call.error)
    call.outcome = outcome
    call.status = Call.Status.CANCELLED if outcome == Call.Outcome.CANCELLED \
        else Call.Status.FAILED
    _timings(call, started, response)
    call.payload = None
    _save_fields(call, _finish_fields(call))
    _send_signal(call)
    return call


def _send_signal(call):
    signal = signals.call_finished if call.status == Call.Status.SUCCEEDED \
        else signals.call_failed
    try:
        signal.send(sender=Call, call=call)
    except Exception:
        logger.exception("A receiver of %s failed for call %s", signal, call.pk)


def reject(invocation, exc):
    """Record a call the gateway refused before asking the upstream, as one finished row.

    Only callers whose key was accepted are recorded; nothing was sent upstream.
    """
    op = invocation.operation
    if not app_settings.RECORD:
        return _unrecorded(invocation, Call.Status.FAILED)
    bodies = records_bodies(op.id, invocation.api_key)
    now = timezone.now()
    body = invocation.body if isinstance(invocation.body, (dict, list)) else None
    call = Call(
        created=now, started_at=now, finished_at=now,
        operation=op.id, method=op.method, path=op.upstream_path(invocation.path_kwargs),
        query=invocation.query[:2048],
        model=op.model_from(body, invocation.path_kwargs)[:200],
        user=invocation.user, api_key=invocation.api_key,
        status=Call.Status.FAILED, outcome=Call.Outcome.REJECTED,
        mode=invocation.mode, source=invocation.source, stream=False,
        request_headers=invocation.recorded_headers(),
        response_status=exc.status_code, error=exc.body()["error"],
        metadata_only=not bodies,
        latency_ms=round((time.perf_counter() - invocation.started) * 1000, 3),
    )
    if bodies and body is not None:
        call.request_body = redact(body, call, "request_body")
        call.prompt_preview = redact(prompt_preview(op.id, body), call, "prompt")
    _save_new(call)
    _send_signal(call)
    return call
