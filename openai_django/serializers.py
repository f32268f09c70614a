"""The JSON shapes of the REST log (``/v1/calls``): the contract's ``call`` object."""

from django.urls import reverse


def _ts(value):
    return int(value.timestamp()) if value else None


def artifact_to_dict(artifact, request=None):
    url = reverse("openai_django:call-artifact", args=[artifact.call_id, artifact.id])
    if request is not None:
        url = request.build_absolute_uri(url)
    return {
        "id": str(artifact.id),
        "object": "call.artifact",
        "role": artifact.role,
        "field": artifact.field,
        "index": artifact.index,
        "name": artifact.name,
        "content_type": artifact.content_type,
        "bytes": artifact.bytes,
        "sha256": artifact.sha256,
        "source_url": artifact.source_url or None,
        "error": artifact.error or None,
        "purged": artifact.purged_at is not None,
        "url": url if artifact.file and not artifact.purged_at else None,
    }


def call_to_dict(call, request=None, *, full=True):
    data = {
        "id": str(call.id),
        "object": "call",
        "operation": call.operation,
        "method": call.method,
        "path": call.path,
        "model": call.model or None,
        "status": call.status,
        "outcome": call.outcome or None,
        "mode": call.mode,
        "stream": call.stream,
        "http_status": call.response_status,
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.total_tokens,
        },
        "cost_usd": str(call.cost_usd) if call.cost_usd is not None else None,
        "latency_ms": call.latency_ms,
        "upstream_latency_ms": call.upstream_latency_ms,
        "created": _ts(call.created),
        "started_at": _ts(call.started_at),
        "finished_at": _ts(call.finished_at),
        "replay_of": str(call.replay_of_id) if call.replay_of_id else None,
        "upstream_request_id": call.upstream_request_id or None,
        "attempts": call.attempt_count,
        "tags": list(call.tags or ()),
        "metadata": call.metadata,
        "session": call.session or None,
        "upstream": call.upstream or None,  # which upstream answered (upstreams.py)
    }
    if full:
        from openai_django.tagging import feedback_of, feedback_to_dict

        data["feedback"] = feedback_to_dict(feedback_of(call))
        data.update({
            "query": call.query or None,
            "request": call.request_body,
            "request_headers": call.request_headers,
            "response": call.response_body,
            "response_text": call.response_text or None,
            "response_headers": call.response_headers,
            "output_text": call.output_text or None,
            "stream_events": call.stream_events,
            "error": call.error,
            "attempt_log": call.attempts,
            "upstream_attempts": call.upstream_attempts,
            "metadata_only": call.metadata_only,
            "redacted": call.redacted,
            "body_purged_at": _ts(call.body_purged_at),
            "artifacts": [artifact_to_dict(a, request) for a in call.artifacts.all()],
        })
    return data
