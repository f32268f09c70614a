"""The benchmark's newer scenarios run in quick mode and give figures that make sense:
speech and a streamed createResponse (recorded, read back from the log), and ``sizes``
(recording cost by body size and by table size)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(tmp_path, only, timeout):
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    # Cached seeded tables go under the test's folder, not the user's cache.
    env["BENCH_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", only, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once  # the bench makes databases of its own
def test_speech_and_responses_stream_are_measured_and_recorded(tmp_path):
    data, table = run_bench(tmp_path, "speech,responses_stream", 180)
    s = data["scenarios"]
    speech = s["speech"]
    assert "error" not in speech, speech
    assert speech["errors"] == 0 and speech["small"]["gateway_rps_c1"] > 0
    assert speech["small"]["gateway_cpu_us_per_request"] > 0
    assert speech["small"]["gateway_p50_ms"] > 0 and speech["small"]["direct_p50_ms"] > 0
    large = speech["large"]
    # The stand-in's longest audio as WAV: 20 s of 24 kHz 16-bit mono and its header.
    assert large["response_bytes"] == 20 * 24000 * 2 + 44
    assert large["gateway_mb_per_s"] > 0 and large["direct_mb_per_s"] > 0
    # The call is recorded and the audio kept as an artifact holding the client's bytes.
    assert large["record_status"] == "succeeded"
    assert large["audio_artifact_bytes"] == large["response_bytes"]
    assert large["audio_artifact_matches"] is True
    stream = s["responses_stream"]
    assert "error" not in stream, stream
    assert stream["errors"] == 0 and stream["stream_ok"] is True
    assert stream["ttfe_gateway_p50_ms"] > 0 and stream["ttfe_direct_p50_ms"] > 0
    assert stream["gaps_measured"] > 0
    # Named events, each kept in the record: response.created ... response.completed.
    assert stream["record_status"] == "succeeded"
    assert stream["record_stream_events"] == stream["events_per_stream"] > 4
    assert "| 1d speech, large WAV | MB/s |" in table
    assert "| 3b createResponse stream | time to first event p50 (ms) |" in table


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once
def test_sizes_scenario_by_body_and_by_table(tmp_path):
    data, table = run_bench(tmp_path, "sizes", 420)
    x = data["scenarios"]["sizes"]
    assert "error" not in x, x
    bodies = x["bodies"]
    small, large = bodies["prompt_1kb"], bodies["prompt_100kb"]
    for f in (small, large, bodies["images_1"], bodies["images_2"]):
        assert f["errors"] == 0 and f["record_status"] == "succeeded", f
        for side in ("recorded", "unrecorded", "direct"):
            assert f[f"{side}_p50_ms"] > 0
        assert f["recorded_cpu_ms_per_call"] >= 0 and f["unrecorded_cpu_ms_per_call"] >= 0
    # A larger body leaves a larger record; the prompt is kept whole in the row.
    assert small["request_bytes"] <= 1024 < large["request_bytes"] <= 100 * 1024
    assert large["row_body_bytes"] > large["prompt_bytes"] > small["row_body_bytes"]
    # Each b64_json image is an artifact (with its bytes), not base64 in the row.
    one, two = bodies["images_1"], bodies["images_2"]
    assert (one["artifacts"], two["artifacts"]) == (1, 2)
    assert 0 < one["artifact_bytes"] < two["artifact_bytes"]
    tables = x["tables"]
    assert list(tables) == ["1k", "10k"]
    for name, calls in (("1k", 1000), ("10k", 10_000)):
        t = tables[name]
        assert t["calls_seeded"] == calls and t["seed"]["calls"] == calls
        assert t["c1_errors"] == 0 and t["c1_p50_ms"] > 0 and t["c1_cpu_us_per_request"] > 0
        assert t[f"c{x['connections']}_rps"] > 0
        assert 0 < t["first_page_ms"] and t["first_page_queries"] > 0
        assert t["db_insert_cpu_us_per_call"] > 0 and t["db_insert_wall_p50_us"] > 0
        # What the run recorded is removed again, so the cached table keeps its count.
        assert t["removed_bench_calls"] > 0
    assert x["largest_vs_smallest"]["first_page_ratio"] > 0
    assert "| 13 sizes: 10k calls in the table | admin first page (ms), queries |" in table
