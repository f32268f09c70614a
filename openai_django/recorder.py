"""What a call's record holds: start, finish, fail, reject.

The recorder turns an invocation, and then the upstream's answer as the operation's kind reads
it, into field values, and hands them to the manager in one save. A call's row is written
before the upstream is asked (so nothing is lost if the process dies or the upstream never
answers), and finished exactly once in every outcome; the gateway decides when.
"""

import logging
import time
from dataclasses import replace

import orjson
from django.db import connections, router, transaction
from django.utils import timezone

from openai_django import kinds, process, signals
from openai_django.artifacts import failed_artifact, fetch_image, save_artifact
from openai_django.conf import app_settings
from openai_django.managers import without_nul
from openai_django.models import Artifact, Call
from openai_django.sse import SSEParser

logger = logging.getLogger("openai_django.recorder")

# A response larger than this is kept as an artifact (exactly as returned) and the row holds a
# compact copy, so million-row tables do not carry megabytes of base64 or embedding floats.
INLINE_RESPONSE_MAX_BYTES = 256 * 1024

FINISH_FIELDS = (
    "status", "outcome", "finished_at", "response_status", "response_headers",
    "response_content_type", "response_body", "response_text", "stream_events", "output_text",
    "upstream_request_id", "object_id", "links", "error", "prompt_tokens", "completion_tokens",
    "total_tokens", "cached_tokens", "reasoning_tokens", "cost_usd", "latency_ms",
    "upstream_latency_ms", "first_byte_ms", "attempts", "attempt_count", "redacted",
    "payload", "started_at", "stream", "upstream", "upstream_attempts",
)


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


def _new_call(invocation, status, bodies):
    op = invocation.operation
    now = timezone.now()
    return Call.objects.new(
        # A budget reservation (controls.py) is made before the row, for the id it will have.
        **({"id": invocation.call_id} if getattr(invocation, "call_id", None) else {}),
        created=now,
        started_at=now if status != Call.Status.QUEUED else None,
        operation=op.id,
        method=op.method,
        path=op.upstream_path(invocation.path_kwargs)[:512],
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
        metadata_only=not bodies,
        tags=invocation.tags,
        metadata=invocation.metadata,
        session=invocation.session,
    )


def _request_fields(call, invocation, body):
    call.request_body = redact(body, call, "request_body")
    call.prompt_preview = redact(invocation.kind.prompt(body), call, "prompt")
    if invocation.raw_body is not None:
        # The body's size as sent: only a body over managers.REQUEST_BODY_APART_BYTES is
        # measured again, to be kept apart.
        call.request_bytes = len(invocation.raw_body)


def start(invocation, *, status=Call.Status.RUNNING, keep_payload=False):
    """Write the call (and its input artifacts) before anything is sent upstream."""
    op = invocation.operation
    if not app_settings.RECORD:
        return _unrecorded(invocation, status)
    bodies = records_bodies(op.id, invocation.api_key)
    call = _new_call(invocation, status, bodies)
    call.idempotency_key = invocation.idempotency_key or ""
    call.request_hash = invocation.request_hash() if invocation.idempotency_key else ""
    call.callback = invocation.callback or ""
    if status == Call.Status.RUNNING:
        call.holder = process.identity()
    if invocation.target is not None:
        call.target = invocation.target
    if bodies:
        _request_fields(call, invocation, invocation.body)
    if keep_payload:
        call.payload = invocation.payload_bytes()
    if invocation.files and (bodies or keep_payload):
        kind = invocation.kind
        with transaction.atomic():
            Call.objects.record_new(call)
            for upload in invocation.files:
                save_artifact(call, kind.upload_role(upload.field), upload.read(),
                              name=upload.name, content_type=upload.content_type,
                              field=upload.field, index=upload.index)
    else:
        Call.objects.record_new(call)
    return call


def reject(invocation, exc):
    """Record a call the gateway refused before asking the upstream, as one finished row.

    Only callers whose key was accepted are recorded; nothing was sent upstream.
    """
    if not app_settings.RECORD:
        return _unrecorded(invocation, Call.Status.FAILED)
    bodies = records_bodies(invocation.operation.id, invocation.api_key)
    call = _new_call(invocation, Call.Status.FAILED, bodies)
    call.finished_at = call.created
    call.outcome = Call.Outcome.REJECTED
    call.stream = False
    call.response_status = exc.status_code
    call.error = exc.body()["error"]
    call.latency_ms = round((time.perf_counter() - invocation.started) * 1000, 3)
    body = invocation.body if isinstance(invocation.body, (dict, list)) else None
    if bodies and body is not None:
        _request_fields(call, invocation, body)
    Call.objects.record_new(call)
    _send_signal(call)
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


def _end_unrecorded(call, response, outcome):
    if response is not None:
        call.response_status = response.status
    call.outcome = outcome
    call.status = Call.Status.SUCCEEDED if outcome == Call.Outcome.OK else Call.Status.FAILED
    return call


def _kind(call):
    kind = getattr(call, "kind", None)
    return kind if kind is not None else kinds.of_call(call)


def _usage(call, usage):
    if usage:
        call.prompt_tokens = usage.prompt
        call.completion_tokens = usage.completion
        call.total_tokens = usage.total
        call.cached_tokens = usage.cached
        call.reasoning_tokens = usage.reasoning


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
    """Record the upstream's answer (any status) and its output artifacts, in one save."""
    from openai_django.pricing import estimate_cost

    ok = 200 <= response.status < 300
    if getattr(call, "unrecorded", False):
        return _end_unrecorded(call, response, outcome or (
            Call.Outcome.OK if ok else Call.Outcome.UPSTREAM_ERROR))
    kind = _kind(call)
    bodies = not call.metadata_only
    if events is None and response.is_event_stream and response.body:
        # A stream read whole (a background call or a replay of a streamed request, where no
        # client waits for the events): recorded as the stream it was.
        parser = SSEParser()
        parser.feed(response.body)
        parser.close()
        events, stream_done = parser.events, parser.done
        call.stream = True
    call.response_status = response.status
    call.response_headers = _recorded_headers(response.headers)
    call.response_content_type = response.content_type[:100]
    call.upstream_request_id = response.headers.get("x-request-id", "")[:100]
    request = call.request_body
    body, outputs = None, ()
    if events is not None:
        assembled = kind.assemble(events, request)
        stream_done = kind.stream_done(events, stream_done)
        _usage(call, assembled.usage)
        body, outputs = assembled.body, assembled.outputs
        if bodies:
            call.output_text = redact(assembled.text, call, "output_text")
            if app_settings.RECORD_STREAM_EVENTS:
                call.stream_events = redact(events, call, "stream_events")
            if body is not None:
                call.response_body = redact(body, call, "response_body")
    elif response.body:
        if "json" in call.response_content_type:
            try:
                body = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                if ok:
                    ok = False
                    outcome = Call.Outcome.BAD_RESPONSE
                    error = {"message": "The upstream answered a body that is not JSON.",
                             "type": "upstream_error", "code": "upstream_bad_response"}
        if isinstance(body, dict):
            _usage(call, kind.usage(body))
            if not ok and isinstance(body.get("error"), dict):
                error = body["error"]
        if bodies:
            outputs = _record_body(call, kind, response, body, request)
    if ok and kind.keeps_object_id:
        # From the answer's ``id``, else the path (a file's content is bytes: its id is in
        # the path), so every call about an object is found by it.
        answer = body if isinstance(body, dict) else None
        call.object_id = kind.object_id(answer, _path_ids(call), request)[:200]
        call.links = kind.links(answer) or None
    if error is not None:
        call.error = error
    if outcome is None:
        outcome = Call.Outcome.OK if ok else Call.Outcome.UPSTREAM_ERROR
    if events is not None and outcome == Call.Outcome.OK and not stream_done:
        outcome = Call.Outcome.STREAM_INCOMPLETE
    call.outcome = outcome
    call.status = Call.Status.SUCCEEDED if outcome == Call.Outcome.OK else Call.Status.FAILED
    if bodies and outputs and (ok or events is not None):
        # Before the final save: whoever sees "succeeded" finds the outputs kept.
        _save_outputs(call, outputs)
    _timings(call, started, response)
    call.cost_usd = estimate_cost(call, kind)
    call.payload = None
    Call.objects.save_fields(call, FINISH_FIELDS)
    _send_signal(call)
    return call


def _path_ids(call):
    operation = call.operation_spec
    if operation is None or not operation.path_params:
        return {}
    from openai_django.invocation import path_kwargs_of

    return path_kwargs_of(operation, call.path)


def _record_body(call, kind, response, body, request):
    """Field values for the answer's body; returns the outputs to keep as artifacts."""
    raw = response.body
    content_type = call.response_content_type
    large = len(raw) > INLINE_RESPONSE_MAX_BYTES
    ok = 200 <= response.status < 300
    if body is not None:
        if large:
            save_artifact(call, Artifact.Role.RESPONSE, raw, name="response.json",
                          content_type="application/json")
            body = compact(body)
        call.response_body = redact(body, call, "response_body")
        call.output_text = redact(kind.output_text(body), call, "output_text")
        outputs = kind.outputs(body, request) if ok else ()
        # A transcript is kept as the record shows it: redacted, when the hook redacts.
        return [replace(o, data=call.output_text.encode())
                if o.role == Artifact.Role.TRANSCRIPT else o for o in outputs]
    if content_type.startswith("text/") and not large:
        call.response_text = redact(raw.decode("utf-8", "replace"), call, "response_text")
        outputs = kind.text_outputs(call.response_text, request) if ok else ()
        if outputs:
            call.output_text = call.response_text
        return outputs
    role = kind.binary_role if ok else Artifact.Role.RESPONSE
    name = _filename(response.headers.get("content-disposition", "")) or kind.binary_name(request)
    save_artifact(call, role, raw, name=name, content_type=content_type.split(";")[0])
    return ()


def _filename(disposition):
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            return value.strip('"')
    return ""


def compact(body):
    """A copy of a large JSON response without its bulk: base64 images and embedding vectors
    are replaced by a short description (the full body is kept as an artifact)."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("output"), list):  # Responses: image-generation results
        output = [{**item, "result": f"<{len(item['result'])} base64 characters, kept as an "
                                     f"artifact>"}
                  if isinstance(item, dict) and isinstance(item.get("result"), str) else item
                  for item in body["output"]]
        body = {**body, "output": output}
    if not isinstance(body.get("data"), list):
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


def _save_outputs(call, outputs):
    for output in outputs:
        if output.data is not None:
            save_artifact(call, output.role, output.data, name=output.name,
                          content_type=output.content_type, index=output.index)
        elif output.url and app_settings.FETCH_IMAGE_URLS:
            try:
                data, content_type = fetch_image(output.url)
            except Exception as exc:  # refused, unreachable, too large: the call still ends
                logger.warning("Output %s of call %s not fetched: %s", output.index, call.pk,
                               exc)
                failed_artifact(call, output.role, exc, index=output.index, name=output.name,
                                source_url=output.url)
                continue
            save_artifact(call, output.role, data, name=output.name, content_type=content_type,
                          index=output.index, source_url=output.url)
        elif output.error:
            failed_artifact(call, output.role, output.error, index=output.index,
                            name=output.name)


def fail(call, exc, *, started=None, outcome=None, response=None, events=None,
         stream_done=False):
    """Finish a call that got no usable answer (unreachable, timeout, broken stream...)."""
    from openai_django.errors import OpenAIDjangoError, UpstreamTimeout

    if outcome is None:
        outcome = Call.Outcome.TIMEOUT if isinstance(exc, UpstreamTimeout) else (
            Call.Outcome.UNREACHABLE if isinstance(exc, OpenAIDjangoError)
            else Call.Outcome.ERROR)
    if getattr(call, "unrecorded", False):
        return _end_unrecorded(call, response, outcome)
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
    Call.objects.save_fields(call, FINISH_FIELDS)
    _send_signal(call)
    return call


def checkpoint(call, events):
    """Save the events of a stream relayed so far (and the text they make), so a process
    that dies mid-stream leaves them in the record (the checkpointer calls this every
    ``STREAM_CHECKPOINT_SECONDS``, from its own thread: ``call`` is read, not changed)."""
    if getattr(call, "unrecorded", False) or call.metadata_only \
            or not app_settings.RECORD_STREAM_EVENTS:
        return
    kind = _kind(call)
    events = redact(list(events), call, "stream_events")
    text = redact(kind.assemble(events, call.request_body).text, call, "output_text")
    alias = router.db_for_write(Call)
    if connections[alias].vendor == "postgresql":
        events, text = without_nul(events), without_nul(text)  # see managers._converter
    # Only while the call runs: a late checkpoint never overwrites the finished record.
    Call.objects.update_running(call.pk, alias, stream_events=events, output_text=text)


def _send_signal(call):
    signal = signals.call_finished if call.status == Call.Status.SUCCEEDED \
        else signals.call_failed
    try:
        signal.send(sender=Call, call=call)
    except Exception:
        logger.exception("A receiver of %s failed for call %s", signal, call.pk)
