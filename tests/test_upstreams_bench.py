"""Scenario 11 of the bench (routing among ten upstreams, a fallback) runs and measures what
it says: every configuration answered, and the fallback configuration really fell back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.once  # the bench makes a database of its own
def test_upstreams_bench_quick(tmp_path):
    out = tmp_path / "upstreams.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run([sys.executable, "-m", "bench.upstreams_bench", "--quick",
                             "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("single", "ten", "fallback"):
        assert data[f"{name}_p50_ms"] > 0
    assert data["route_warm_us"] > 0 and data["route_cold_us"] > data["route_warm_us"]
    assert "Upstream first failed (429); trying second" in result.stderr
