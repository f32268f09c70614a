"""Today's operations, recorded, gateway beside direct: a streamed ``createResponse`` and speech.

* ``responses_stream``: scenario 3's measure (time to first event over short streams, event
  gaps of streams paced ``gap_ms`` upstream) on ``POST /v1/responses`` with ``stream: true``
  (named events from ``response.created`` to ``response.completed``, no ``[DONE]``); the JSON
  ``createResponse`` is scenario ``responses`` (1b).
* ``speech``: ``POST /v1/audio/speech``, a binary answer. c=1 added latency p50/p99 (wrk,
  gateway and direct alternated like scenario 1) on a short mp3, then a large answer (a WAV of
  the stand-in's longest audio, 20 s, about 960 KB) timed call by call on both sides:
  p50 and bytes/s. The gateway keeps the audio as an artifact in storage.

Both end by reading one recorded call back (``GET /v1/calls/<id>`` with the client's key): the
row is finished, and for speech its ``generated_audio`` artifact is there with the answer's
size, and its content (``GET /v1/calls/<id>/artifacts/<aid>``) is the bytes the client got.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import statistics
import time

from bench import scenarios
from bench.sizes_bench import recorded_call

RESPONSE_STREAM = {**scenarios.RESPONSE, "stream": True}
SPEECH = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Say hello to the benchmark."}
# 0.35 s a word, capped at 20 s by the stand-in: a 20 s, 24 kHz 16-bit WAV (960 KB).
SPEECH_LARGE = {"model": "gpt-4o-mini-tts", "voice": "alloy", "response_format": "wav",
                "input": " ".join(["This is a long sentence read aloud for the benchmark."]
                                  * 10)}


def responses_stream(ctx):
    body = json.dumps(RESPONSE_STREAM).encode()
    out = scenarios.streaming(ctx, path="/responses", body=body)
    # One more stream, read back from the log.
    headers = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    result = asyncio.run(scenarios._sequential_streams(ctx.gateway.url + "/v1/responses",
                                                       headers, body, 1))[0]
    call_id = result.headers.get("x-call-id")
    out["stream_ok"] = result.ok
    out["events_per_stream"] = len(result.event_times)
    out.update(_record_check(ctx, call_id))
    return out


def _record_check(ctx, call_id):
    if not call_id:
        return {"record_status": None, "record_error": "no X-Call-Id"}
    record, waited = recorded_call(ctx, ctx.gateway, call_id)
    return {"record_call_id": call_id, "record_status": record.get("status"),
            "record_wait_s": round(waited, 3),
            "record_stream_events": len(record.get("stream_events") or ())}


def _post(port, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        return (response.status, payload, time.perf_counter() - started,
                response.getheader("X-Call-Id"))
    finally:
        conn.close()


def speech(ctx):
    p = ctx.params
    # Calls outside wrk's rounds, on new connections (every worker): a worker's first audio
    # answer loads the storage backend.
    for _ in range(10):
        _post(ctx.gateway.port, "/v1/audio/speech", json.dumps(SPEECH).encode(),
              ctx.gw_headers())
    # Scenario 1's measure, with the gateway's CPU per call (steadier on a busy machine).
    small = scenarios.compare_latency(ctx, {"gateway": ctx.gateway}, name="speech",
                                      path="/audio/speech", body=SPEECH)
    out = {"small": {k if k.startswith(("gateway_", "direct_")) or k in ("errors", "rounds")
                     else f"gateway_{k}": v for k, v in small.items()}}
    out["small"]["added_p50_ms"] = small["gateway_added_p50_ms"]
    out["small"]["added_p99_ms"] = small["gateway_added_p99_ms"]
    body = json.dumps(SPEECH_LARGE).encode()
    gw = (ctx.gateway.port, "/v1/audio/speech", ctx.gw_headers())
    direct = (ctx.upstream.port, "/v1/audio/speech", ctx.direct_headers())
    _post(gw[0], gw[1], body, gw[2])
    _post(direct[0], direct[1], body, direct[2])
    g_s, d_s, errors, size, payload, call_id = [], [], 0, 0, b"", None
    for _ in range(max(p.large_repeats * 2, 2)):
        status, payload, seconds, call_id = _post(gw[0], gw[1], body, gw[2])
        errors += status != 200
        g_s.append(seconds)
        size = len(payload)
        status, _, seconds, _ = _post(direct[0], direct[1], body, direct[2])
        errors += status != 200
        d_s.append(seconds)
    g50, d50 = statistics.median(g_s), statistics.median(d_s)
    out["large"] = {
        "response_bytes": size, "repeats": len(g_s), "errors": errors,
        "gateway_p50_ms": round(g50 * 1000, 3), "direct_p50_ms": round(d50 * 1000, 3),
        "added_p50_ms": round(statistics.median([a - b for a, b in zip(g_s, d_s)]) * 1000, 3),
        "gateway_mb_per_s": round(size / g50 / 2**20, 1) if g50 else None,
        "direct_mb_per_s": round(size / d50 / 2**20, 1) if d50 else None,
    }
    out["large"].update(_artifact_check(ctx, call_id, payload))
    out["added_p50_ms"] = out["small"]["added_p50_ms"]
    out["added_p99_ms"] = out["small"]["added_p99_ms"]
    out["errors"] = out["small"]["errors"] + errors
    return out


def _artifact_check(ctx, call_id, payload):
    """The last large call's record and its audio artifact, read back through the API."""
    figures = _record_check(ctx, call_id)
    if not call_id:
        return figures
    record, _ = recorded_call(ctx, ctx.gateway, call_id)
    audio = [a for a in record.get("artifacts") or () if a.get("role") == "generated_audio"]
    figures["artifacts"] = len(record.get("artifacts") or ())
    figures["audio_artifact_bytes"] = int(audio[0].get("bytes") or 0) if audio else None
    if audio:
        conn = http.client.HTTPConnection("127.0.0.1", ctx.gateway.port, timeout=60)
        try:
            conn.request("GET", f"/v1/calls/{call_id}/artifacts/{audio[0]['id']}",
                         headers={"Authorization": f"Bearer {ctx.harness.client_key}"})
            response = conn.getresponse()
            stored = response.read()
        finally:
            conn.close()
        figures["audio_artifact_matches"] = (response.status == 200 and hashlib.sha256(
            stored).digest() == hashlib.sha256(payload).digest())
    return figures


def table_rows(s, row):
    if "responses_stream" in s:
        x = s["responses_stream"]
        row("3b createResponse stream", "time to first event p50 (ms)", x["ttfe_gateway_p50_ms"],
            x["ttfe_direct_p50_ms"], x["ttfe_added_p50_ms"])
        row("3b createResponse stream", f"event gap p50, upstream {x['gap_upstream_ms']:g} ms",
            x["gap_gateway_p50_ms"], x["gap_direct_p50_ms"], None)
        row("3b createResponse stream", "gap deviation p99 / max (ms)",
            x["gap_gateway_dev_p99_ms"], x["gap_direct_dev_p99_ms"], x["gap_gateway_dev_max_ms"])
        row("3b createResponse stream", "coalesced events", x["coalesced_gateway"],
            x["coalesced_direct"])
        row("3b createResponse stream", "recorded: status, events kept", x.get("record_status"),
            None, x.get("record_stream_events"))
    if "speech" in s:
        x = s["speech"]
        small, large = x["small"], x["large"]
        row("1d speech c=1 (mp3)", "p50 (ms)", small["gateway_p50_ms"], small["direct_p50_ms"],
            small["added_p50_ms"])
        row("1d speech c=1 (mp3)", "p99 (ms)", small["gateway_p99_ms"], small["direct_p99_ms"],
            small["added_p99_ms"])
        row("1d speech c=1 (mp3)", "gateway CPU per call (us)",
            small.get("gateway_cpu_us_per_request"))
        row("1d speech, large WAV", f"{large['response_bytes']:,} bytes: p50 (ms)",
            large["gateway_p50_ms"], large["direct_p50_ms"], large["added_p50_ms"])
        row("1d speech, large WAV", "MB/s", large["gateway_mb_per_s"], large["direct_mb_per_s"])
        row("1d speech, large WAV", "recorded: status, audio artifact bytes (same bytes)",
            large.get("record_status"), large.get("audio_artifact_bytes"),
            large.get("audio_artifact_matches"))
