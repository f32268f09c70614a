"""A local stand-in for the OpenAI API, for tests, benchmarks and the offline demo.

There is no internet where this project is tested, and the real API must never be called from
tests, so :class:`StandinServer` starts an OpenAI-compatible HTTP/1.1 server in a child process
(``python -m openai_django.testing.upstream``) and steers it through its control API::

    from openai_django.testing import StandinServer

    with StandinServer(gap_ms=5) as upstream:
        client = openai.OpenAI(base_url=upstream.url, api_key="x")
        upstream.fault(path="/v1/chat/completions", kind="status", status=429, retry_after=1)
        ...
        assert upstream.requests()[-1]["body"]["model"] == "gpt-4o-mini"

What the server does:

* routes every (method, path) of both bundled specs, ``openapi.yaml`` (v1.2.0) and
  ``openapi-2.3.0.yaml``, under ``/v1/`` (:mod:`.specs` derives the table; no 404 for a spec
  path).  Operations with a handler named after their ``operationId`` answer spec-shaped,
  deterministic data (replies quote the last user message; usage counts words); every other
  one (assistants, threads, evals, realtime, chatkit, skills, organization admin ...) answers
  its ``x-oaiMeta`` example with fresh ids and the caller's path ids echoed, or a minimal body
  from its 200 schema, or bytes of its binary type (``video/mp4``, ``application/zip`` ...);
* ``stream: true`` on completions and chat, and ``?stream=true`` on fine-tune events, answer
  ``text/event-stream`` (chunked, one write per event, ``data: [DONE]`` at the end); knobs
  ``events``, ``ttft_ms`` and ``gap_ms`` pace them;
* today's API, stateful where the SDK round-trips (stores cleared by ``/_control/reset``):
  ``/responses`` (JSON; ``stream: true`` answers named events ``response.created``,
  ``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
  ``response.output_text.delta`` ..., ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done`` (function-call argument and
  reasoning-summary events when there are such items), ``response.completed``; each with
  ``type`` and ``sequence_number``, no ``[DONE]``), stored responses with input items,
  background cancel, compaction and input-token counts; conversations with items; stored chat
  completions (``store: true``); speech bytes per ``response_format`` and
  ``speech.audio.delta``/``done`` events; ``transcript.text.delta``/``done`` for gpt-4o
  transcriptions; gpt-image ``b64_json`` with usage and ``image_generation.*``/``image_edit.*``
  partial-image events; uploads with parts; batches answered line by line into output and
  error files; fine-tuning jobs with events, checkpoints, pause/resume/cancel; vector stores,
  videos and containers.  Jobs, batches, background responses and videos finish after
  ``job_seconds`` (default 0.3 s, 0 with ``fast``);
* every size derived from a request is bounded (``state.MAX_*``: events per stream, epochs,
  list ``limit``, batch lines, partial images, audio length, image size, embeddings ...);
* requires ``Authorization: Bearer <non-empty>`` (or exactly ``api_key`` if one was given);
* control API without auth: ``/_control/faults`` (GET, POST a spec or a list, DELETE),
  ``/_control/config`` (GET, POST), ``/_control/requests`` (GET ``?limit=N``, DELETE; the
  last ``log_size`` requests to ``/v1`` and to generated images, not kept with ``fast``),
  ``/_control/reset`` (POST), ``/_control/health`` (GET);
* fault kinds, on every route: ``status`` (``status``, ``retry_after``, ``body``,
  ``message``), ``delay`` (``seconds``), ``reset`` (TCP RST), ``cut`` (``after`` events, then
  close without ``[DONE]`` or the chunked terminator), ``hang_stream`` (``after`` events,
  stall ``seconds``), ``no_done`` (clean end without ``[DONE]``; on a named-event stream,
  without its last event such as ``response.completed``), ``malformed`` (200 with a non-JSON
  body); each with optional ``path`` (exact, or prefix ending in ``*``), ``method`` and
  ``times`` (-1 = until cleared);
* generated image URLs (``{image_base_url}/images/<name>.png``) are served by the server
  itself, on its TLS listener when there is one.

This module imports nothing of the server itself, so ``python -m ...upstream`` stays clean.
"""

from .standin import StandinError, StandinServer, make_self_signed_cert

__all__ = ["StandinError", "StandinServer", "make_self_signed_cert"]
