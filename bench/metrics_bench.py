"""What the metrics cost, and why they are counted in the processes (multiprocess mode) rather
than from the database at scrape time.

    python -m bench.metrics_bench [--calls N] [--processes P] [--database-url sqlite:///…]

Figures (JSON):

- ``observe_us``: microseconds to count one finished call (calls, tokens, cost, two
  histograms), in memory and in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, measured in a
  subprocess, since the mode is chosen when prometheus-client is imported);
- ``scrape_ms``: one scrape after ``--processes`` processes each counted ``--calls`` calls
  over a realistic spread of labels, in multiprocess mode (it reads one file per process and
  metric type, whatever the number of calls);
- ``database_scrape_ms`` (with ``--database-url``, a seeded database: ``python -m bench.seed``):
  the one aggregate query a scrape would run to count the same metrics from the call table
  (counts, tokens, cost and the histogram buckets by operation, model, status, outcome).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WORKER = r"""
import json, os, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.test import override_settings
from django.utils import timezone
from openai_django import metrics
from openai_django.models import Call
calls = int(sys.argv[1])
models = ["gpt-4o-mini", "gpt-4.1", "o3", "text-embedding-3-small", "gpt-5"]
ops = ["createChatCompletion", "createResponse", "createEmbedding"]
sample = [Call(operation=ops[i % 3], model=models[i % 5],
               status="succeeded" if i % 20 else "failed",
               outcome="ok" if i % 20 else "upstream_error", latency_ms=120.0 + i % 900,
               upstream_latency_ms=100.0 + i % 800, prompt_tokens=500, completion_tokens=200,
               cached_tokens=128 if i % 2 else 0, cost_usd=0.0012, created=timezone.now(),
               error=None if i % 20 else {"code": "server_error"}, response_status=200)
          for i in range(100)]
with override_settings(OPENAI_DJANGO={"METRICS": {"TOKEN": "x"}}):
    metrics.get()
    for call in sample:
        metrics.observe(call)
    started = time.process_time()  # CPU time: other processes' load does not count
    for i in range(calls):
        metrics.observe(sample[i % 100])
    print(json.dumps({"observe_us": (time.process_time() - started) / calls * 1e6}))
"""

BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000, 60000, 120000,
              300000, 600000)


def run_worker(calls, env):
    out = subprocess.run([sys.executable, "-c", _WORKER, str(calls)], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def database_scrape_ms(url, repeat=3):
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "project.settings"}
    buckets = ", ".join(
        f"SUM(CASE WHEN {col} <= {b} THEN 1 ELSE 0 END)"
        for col in ("latency_ms", "upstream_latency_ms") for b in BUCKETS_MS)
    query = (f"SELECT operation, model, status, outcome, COUNT(*), SUM(prompt_tokens), "
             f"SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens), "
             f"SUM(cost_usd), SUM(latency_ms), SUM(upstream_latency_ms), {buckets} "
             f"FROM openai_django_call GROUP BY operation, model, status, outcome")
    code = (
        "import django, json, time\ndjango.setup()\nfrom django.db import connection\n"
        f"q = {query!r}\nbest = None\nrows = 0\n"
        f"for _ in range({repeat}):\n"
        "    t = time.perf_counter()\n"
        "    with connection.cursor() as c:\n"
        "        c.execute(q); rows = len(c.fetchall())\n"
        "        c.execute('SELECT COUNT(*) FROM openai_django_call'); n = c.fetchone()[0]\n"
        "    d = (time.perf_counter() - t) * 1000\n"
        "    best = d if best is None else min(best, d)\n"
        "print(json.dumps({'ms': round(best, 1), 'groups': rows, 'calls': n}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=1200, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    base_env = {k: v for k, v in os.environ.items()
                if k.lower() != "prometheus_multiproc_dir"}
    base_env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    base_env["PYTHONPATH"] = str(ROOT)
    figures = {"observe_us": {}}
    figures["observe_us"]["in_memory"] = round(run_worker(args.calls, base_env)["observe_us"],
                                               2)
    with tempfile.TemporaryDirectory(prefix="od-metrics-") as path:
        env = {**base_env, "PROMETHEUS_MULTIPROC_DIR": path}
        runs = [run_worker(args.calls, env)["observe_us"] for _ in range(args.processes)]
        figures["observe_us"]["multiprocess"] = round(sum(runs) / len(runs), 2)
        code = ("import os, time, json\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', "
                "'project.settings')\nimport django\ndjango.setup()\n"
                "from openai_django import metrics\nbest = None\n"
                "for _ in range(5):\n    t = time.process_time()\n"
                "    body, _ = metrics.exposition()\n"
                "    d = (time.process_time() - t) * 1000\n"
                "    best = d if best is None else min(best, d)\n"
                "print(json.dumps({'ms': round(best, 2), 'bytes': len(body), "
                "'files': len(os.listdir(os.environ['PROMETHEUS_MULTIPROC_DIR']))}))\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=env,
                             capture_output=True, text=True, timeout=300, check=True)
        figures["scrape_ms"] = {"multiprocess": json.loads(out.stdout.strip().splitlines()[-1]),
                                "processes": args.processes,
                                "calls": args.calls * args.processes}
    if args.database_url:
        figures["database_scrape_ms"] = database_scrape_ms(args.database_url)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
