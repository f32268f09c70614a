"""The peers scenario (``python -m bench --peers``, bench/peers.py) without installing LiteLLM:
when LiteLLM's virtualenv cannot be made, the run still loads the gateway and the stand-in at
every concurrency, and says why the peer is missing instead of inventing its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import peers

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not os.path.exists("/usr/bin/wrk"), reason="wrk is not installed")
@pytest.mark.once  # the bench makes databases of its own
def test_peers_without_a_litellm_venv_measures_the_gateway_and_says_why(tmp_path):
    out = tmp_path / "latest.json"
    cache = tmp_path / "peers-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    # An interpreter that is not there: `python -m venv` cannot run, so nothing is installed.
    env.update(BENCH_PEERS_DIR=str(cache), BENCH_PEERS_PYTHON=str(tmp_path / "no-python"),
               BENCH_PEERS_PG="0")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--peers", "--only", "peers",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    x = json.loads(out.read_text())["scenarios"]["peers"]
    assert "error" not in x, x
    reason = x["not_measurable"]["litellm"]
    assert reason.startswith("no virtualenv for LiteLLM:") and "no-python" in reason, reason
    assert x["not_measurable"]["litellm_db"] == "PostgreSQL sides off (BENCH_PEERS_PG=0)"
    assert "litellm" not in x and "litellm_db" not in x
    assert not (cache / f"litellm-{peers.LITELLM_VERSION}" / "bin" / "litellm").exists()
    # The gateway (recording on) and the stand-in were still measured at every concurrency.
    for side in ("gateway", "direct"):
        for c in peers.CONCURRENCIES:
            assert x[side][f"c{c}_rps"] > 0 and x[side][f"c{c}_errors"] == 0, (side, c, x[side])
            assert x[side][f"c{c}_p50_ms"] > 0 and x[side][f"c{c}_requests"] > 0
        assert x[side]["ttfe_p50_ms"] > 0 and x[side]["stream_errors"] == 0
    assert x["gateway"]["cpu_us_per_request"] > 0 and x["gateway"]["rss_peak_mb"] > 10
    # The table says what could not run and why; the targets say "not measured".
    assert "| LiteLLM proxy, no database | not measurable here: no virtualenv for LiteLLM" \
        in result.stdout
    assert "| gateway ahead of LiteLLM (no DB) on every column (columns behind) | <= 0 | - " \
        "| not measured |" in result.stdout


def test_an_installed_venv_is_reused_and_a_missing_one_is_not_installed_unasked(
        tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_PEERS_DIR", str(tmp_path))
    monkeypatch.setenv("BENCH_PEERS_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(peers.PeerUnavailable, match="--peers installs it"):
        peers.ensure_litellm(install=False)
    venv = peers.venv_path()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "litellm").write_text("")
    marker = venv / "bench-peers.json"
    marker.write_text(json.dumps({"litellm": peers.LITELLM_VERSION, "requirements": [
        f"litellm[proxy]=={peers.LITELLM_VERSION}", peers.PRISMA_REQUIREMENT]}))
    assert peers.ensure_litellm(install=False) == venv
    # Another pinned version in the marker: made anew (and here that fails, with the reason).
    marker.write_text(json.dumps({"litellm": "0.0.1", "requirements": []}))
    with pytest.raises(peers.PeerUnavailable, match="no virtualenv for LiteLLM"):
        peers.ensure_litellm(install=True)


def test_the_litellm_config_points_at_the_stand_in_with_production_settings():
    for database in (False, True):
        config = yaml.safe_load(peers.litellm_config("http://127.0.0.1:9/v1",
                                                     database=database))
        (model,) = config["model_list"]
        assert model["model_name"] == "gpt-4o-mini"
        assert model["litellm_params"] == {"model": "openai/gpt-4o-mini",
                                           "api_base": "http://127.0.0.1:9/v1",
                                           "api_key": "sk-bench-upstream"}
        general = config["general_settings"]
        assert general["master_key"].startswith("sk-")
        assert general["disable_spend_logs"] is (not database)
        assert config["litellm_settings"]["set_verbose"] is False
    command = peers.litellm_command(Path("/v"), Path("/c.yaml"), 4321, 2)
    assert command[0] == "/v/bin/litellm" and "--detailed_debug" not in command
    assert command[command.index("--num_workers") + 1] == "2"


def test_columns_behind_names_each_column_the_peer_wins():
    gateway = {"c1_rps": 500, "c1_p50_ms": 1.5, "c1_p99_ms": 9, "cpu_us_per_request": 900,
               "rss_peak_mb": 300}
    peer = {"c1_rps": 100, "c1_p50_ms": 8, "c1_p99_ms": 5, "cpu_us_per_request": 20000,
            "rss_peak_mb": 1000, "c32_rps": 40}
    assert peers.behind(gateway, peer) == ["c1_p99_ms"]
    assert peers.behind({**gateway, "rss_peak_mb": 1000}, peer) == ["c1_p99_ms", "rss_peak_mb"]
