"""The benchmark suite works: ``python -m bench --quick`` runs end to end and writes its JSON;
and ``RECORD = False``, the suite's "recording off" baseline, really records nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from openai_django.models import Call

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once  # the bench makes databases of its own
def test_quick_bench_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only",
         "latency,sdk_latency,responses,streaming", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    latency = data["scenarios"]["latency"]
    # Both sides were measured and every request was answered.
    assert latency["errors"] == 0 and latency["requests"] > 0
    assert latency["gateway_p50_ms"] > 0 and latency["direct_p50_ms"] > 0
    # The same call through the official SDK's client, gateway and direct.
    sdk = data["scenarios"]["sdk_latency"]
    assert sdk["errors"] == 0 and sdk["requests"] > 0 and sdk["gateway_p50_ms"] > 0
    assert "| added latency p99, c=1, openai SDK client (ms) | <= 5.0 |" in result.stdout
    # Today's API: a recorded createResponse, measured the same way.
    responses = data["scenarios"]["responses"]
    assert responses["errors"] == 0 and responses["requests"] > 0
    assert responses["gateway_p50_ms"] > 0
    streaming = data["scenarios"]["streaming"]
    assert streaming["errors"] == 0 and streaming["gaps_measured"] > 0
    assert streaming["ttfe_gateway_p50_ms"] > 0
    # The table names every target and gives a verdict or says it was not measured.
    assert "| added latency p50, c=1 (ms) | <= 1.0 |" in result.stdout
    assert len(data["targets"]) >= 8
    assert data["meta"]["gateway"]["server"] == "granian-wsgi"


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once  # the bench makes databases and servers of its own
def test_the_scenarios_after_serving_find_the_suites_gateway_again(tmp_path):
    """``serving`` stops the suite's gateway to measure each server alone; ``sizes`` (and
    ``peers``) come after it and measure that gateway. Two full runs lost both to a
    connection refused before it was started again."""
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "serving,sizes",
         "--sizes-parts", "bodies", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    scenarios = json.loads(out.read_text())["scenarios"]
    assert "error" not in scenarios["serving"], scenarios["serving"]
    assert {row["errors"] for name, row in scenarios["serving"].items()
            if name != "scenario_seconds"} == {0}
    sizes = scenarios["sizes"]
    assert "error" not in sizes, sizes["error"]
    assert sizes["bodies"]["prompt_1kb"]["errors"] == 0
    assert sizes["bodies"]["prompt_1kb"]["record_status"] == "succeeded"


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once
def test_asgi_beside_wsgi_and_a_short_soak(tmp_path):
    """Scenarios 9 (ASGI beside WSGI, one run), a short soak of one ASGI worker (every
    stream answered, every call recorded succeeded, the gateway's memory and fds sampled) and
    its floors (a bare app and a bare relay under the same load)."""
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only",
         "asgi_latency,asgi_throughput,asgi_streaming,soak,soak_floor", "--soak-streams", "300",
         "--soak-seconds", "5", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    s = data["scenarios"]
    assert data["meta"]["asgi_gateway"]["server"] == "uvicorn"
    for name in ("asgi_latency", "asgi_responses", "asgi_throughput", "asgi_streaming"):
        assert "error" not in s[name], s[name]
        assert s[name]["errors"] == 0, s[name]
    for side in ("wsgi", "asgi"):
        assert s["asgi_latency"][f"{side}_p50_ms"] > 0
        assert s["asgi_responses"][f"{side}_p50_ms"] > 0
        assert s["asgi_throughput"][f"{side}_rps"] > 0
        assert s["asgi_streaming"][f"{side}_ttfe_p50_ms"] > 0
        assert s["asgi_streaming"][f"{side}_gaps_measured"] > 0
    assert s["asgi_throughput"]["asgi_vs_wsgi"] > 0
    soak = s["soak"]
    assert "error" not in soak, soak
    assert soak["errors"] == 0 and soak["ok"] == 300, soak
    assert soak["records_succeeded"] == 300 and soak["records_not_succeeded"] == 0, soak
    assert soak["fds_peak"] >= 300 and soak["rss_per_stream_kb"] is not None
    assert soak["gaps_measured"] > 0 and soak["gap_dev_p99_ms"] is not None
    assert "| soak: stream errors, one ASGI worker | <= 0 | 0 | met |" in result.stdout
    floors = s["soak_floor"]
    assert set(floors) == {"timer events", "bare relay", "scenario_seconds"}, floors
    for label in ("timer events", "bare relay"):
        x = floors[label]
        assert x["errors"] == 0 and x["ok"] == 300, x
        assert x["events_received"] == 300 * soak["events_per_stream"], x
        assert x["fds_peak"] >= 300 and x["cpu_us_per_event_all_in"] > 0, x
    assert floors["timer events"]["upstream_cpu_cores_plateau"] is None
    assert floors["bare relay"]["relay"] == "2"  # over HTTP/2, as the soak's gateway
    assert "| 10b soak floor, bare relay: 300 x" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_record_off_writes_no_call_but_still_answers_with_a_call_id(gateway, api_key, settings,
                                                                     upstream):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "RECORD": False}
    before = Call.objects.count()
    response = requests.post(
        f"{gateway}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert response.headers["X-Call-Id"]
    # A stream and a rejected request record nothing either.
    stream = requests.post(
        f"{gateway}/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True,
              "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
    )
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    bad = requests.post(f"{gateway}/chat/completions", json={"model": "gpt-4o-mini"},
                        headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert bad.status_code == 400 and bad.headers["X-Call-Id"]
    assert Call.objects.count() == before


@pytest.mark.once  # the bench makes a database of its own
def test_writer_batch_bench_shows_a_batch_writing_fewer_pages_a_call(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run([sys.executable, "-m", "bench.writer_batch_bench", "1,5", "5"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    frames = {}
    for line in result.stdout.splitlines():
        if "WAL frames" in line:
            size = int(line.split()[0])
            way = line.split(",")[1].split(":")[0].strip()
            frames[size, way] = float(line.rsplit("(", 1)[1].split()[0])
    assert set(frames) == {(n, w) for n in (1, 5)
                           for w in ("one batch", "each statement committed")}, result.stdout
    # Five calls' pages shared in one commit: fewer a call than each statement's own commit,
    # and fewer than a call written alone.
    assert frames[5, "one batch"] < frames[5, "each statement committed"]
    assert frames[5, "one batch"] < frames[1, "one batch"]


@pytest.mark.once  # the bench makes a database and a stand-in of its own
def test_instructions_cpu_mode_serves_recorded_calls(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run([sys.executable, "-m", "bench.instructions", "--cpu", "--calls",
                             "20"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert "recording on" in line and "20 calls" in line, line
    user, system = int(line.split()[0]), int(line.split()[4])
    assert user > 0 and system >= 0


@pytest.mark.once  # the bench makes a database and a stand-in of its own
def test_instructions_cpu_mode_takes_a_long_system_prompt(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run([sys.executable, "-m", "bench.instructions", "--cpu", "--calls",
                             "10", "--system-bytes", "200000"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert "chat call with a 200,000-byte system prompt" in line and "10 calls" in line, line
    assert int(line.split()[0]) > 0


def _perf_samples_here():
    """Whether ``perf record`` can sample a process of ours (installed, and allowed by
    ``perf_event_paranoid``): a one-second probe."""
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "record", "-q", "-o", os.devnull, "--", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.once  # the bench makes a database and a stand-in of its own
def test_instructions_perf_mode_splits_the_record_by_library(tmp_path):
    if not _perf_samples_here():
        pytest.skip("perf is not installed or may not sample here (Debian: linux-perf)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run([sys.executable, "-m", "bench.instructions", "--perf", "--calls",
                             "300", "--keep", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines()[2:]:
        name, on, off, record = line.rsplit(None, 3)
        rows[name.strip()] = int(on), int(off), int(record)
    assert {"python", "all"} <= set(rows), result.stdout
    on, off, record = rows["all"]
    assert on > 0 and off > 0 and abs(record - (on - off)) <= 1  # each figure rounded
    # SQLite runs (beyond the key's lookup) to write the record: a recorded call spends more
    # in it. (A Python built with SQLite inside has no row of its own for it.)
    if "sqlite3" in rows:
        assert rows["sqlite3"][0] > rows["sqlite3"][1], result.stdout
    assert (tmp_path / "perf.on.data").exists() and (tmp_path / "perf.off.data").exists()


@pytest.mark.once  # the bench makes a database of its own
def test_bodies_read_bench_reads_a_batch_of_bodies_in_one_query(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    out = tmp_path / "bodies.json"
    result = subprocess.run([sys.executable, "-m", "bench.bodies_read_bench", "--calls", "30",
                             "--kb", "12", "--runs", "2", "--databases", "sqlite",
                             "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())["sqlite"]["runs"]
    assert len(runs) == 2
    for run in runs:
        # The calls' query, then a query a body read one by one; prefetched, one for them all.
        assert run["one_by_one_queries"] == 1 + 30 and run["prefetched_queries"] == 2
        assert run["one_by_one_us"] > 0 and run["prefetched_us"] > 0
        assert run["export_mb"] > 30 * 12 * 1024 / 1e6  # every prompt exported whole


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once  # the bench makes a database, a stand-in and a gateway of its own
def test_checkpoint_stalls_sets_the_slowest_calls_beside_the_log_restarts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    out = tmp_path / "stalls.json"
    result = subprocess.run([sys.executable, "-m", "bench.checkpoint_stalls", "--calls", "0",
                             "--seconds", "8", "--slowest", "5", "--json", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    # Every call wrk made was recorded (one may finish after wrk's count), and at ~15 WAL
    # frames a call, 8 s of calls fill the log past FULL_PAGES (16,000) even at 200 req/s:
    # it starts over at least once.
    assert figures["requests"] > 100 and figures["recorded"] >= figures["requests"]
    assert figures["restarts"] >= 1
    cycles = [row["cycle_ms"] for row in figures["slowest"]]
    assert len(cycles) == 5 and cycles == sorted(cycles, reverse=True) and cycles[-1] > 0
