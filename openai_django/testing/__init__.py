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

* answers the 28 operations of the OpenAI spec v1.2.0 under ``/v1/`` with spec-shaped,
  deterministic JSON (replies quote the last user message; usage counts words);
* ``stream: true`` on completions and chat, and ``?stream=true`` on fine-tune events, answer
  ``text/event-stream`` (chunked, one write per event, ``data: [DONE]`` at the end); knobs
  ``events``, ``ttft_ms`` and ``gap_ms`` pace them;
* requires ``Authorization: Bearer <non-empty>`` (or exactly ``api_key`` if one was given);
* control API without auth: ``/_control/faults`` (GET, POST a spec or a list, DELETE),
  ``/_control/config`` (GET, POST), ``/_control/requests`` (GET ``?limit=N``, DELETE; the
  last ``log_size`` requests to ``/v1`` and to generated images, not kept with ``fast``),
  ``/_control/reset`` (POST), ``/_control/health`` (GET);
* fault kinds: ``status`` (``status``, ``retry_after``, ``body``, ``message``), ``delay``
  (``seconds``), ``reset`` (TCP RST), ``cut`` (``after`` events, then close without
  ``[DONE]`` or the chunked terminator), ``hang_stream`` (``after`` events, stall ``seconds``),
  ``no_done`` (clean end without ``[DONE]``), ``malformed`` (200 with a non-JSON body); each
  with optional ``path`` (exact, or prefix ending in ``*``), ``method`` and ``times`` (-1 =
  until cleared);
* generated image URLs (``{image_base_url}/images/<name>.png``) are served by the server
  itself, on its TLS listener when there is one.

This module imports nothing of the server itself, so ``python -m ...upstream`` stays clean.
"""

from .standin import StandinError, StandinServer, make_self_signed_cert

__all__ = ["StandinError", "StandinServer", "make_self_signed_cert"]
