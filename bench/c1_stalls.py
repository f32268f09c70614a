"""Where a recording gateway's slow requests at c=1 spend their time.

    python -m bench.c1_stalls [SECONDS] [ROOT=/tree] [WORKERS=2] [THREADS=512] [ENV=V ...]

One gateway (granian WSGI, recording on, SQLite WAL, the bench's stand-in), wrk at c=1 for
SECONDS (10), then, from the calls recorded meanwhile: ``latency_ms`` and
``upstream_latency_ms``, the time from one call's finish to the next one's start (outside the
call: the response, wrk, the next request's parse and auth), and the slowest 1 % of cycles
split into the two. ``TOP=N`` in the environment also prints the N busiest threads of the
machine over the run (``/proc/<tid>/schedstat``: CPU, run-queue wait and switches a
request). ``ROOT`` serves another checkout (``git worktree add``), for a before/after.
wrk's p99 is corrected for coordinated omission (docs/performance.md): one long stall
weighs as many requests as fit in it.
"""
import json
import os
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import bench.harness as harness_module
from bench import scenarios
from bench.harness import Harness
from bench.loadgen import run_wrk


def _threads():
    """``{(pid, tid): (process, thread, cpu ns, run-queue wait ns, switches)}``, machine-wide."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ")[:50].decode(errors="replace")
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    run, wait, switches = map(int, fh.read().split())
                with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                    name = fh.read().strip()
                out[(pid, tid)] = (command, f"{name}/{tid}", run, wait, switches)
        except OSError:
            pass
    return out


def _print_threads(before, after, requests, top):
    rows = []
    for key, (command, name, *now) in after.items():
        was = before.get(key, (None, None, 0, 0, 0))[2:]
        delta = [a - b for a, b in zip(now, was)]
        if delta[0] > 0:
            rows.append((delta, command, name))
    for (run, wait, switches), command, name in sorted(rows, key=lambda r: -r[0][0])[:top]:
        print(f"  {command:50} {name:24} cpu/req {run / requests / 1000:7.1f} us  "
              f"run-queue wait/req {wait / requests / 1000:7.1f} us  "
              f"switches/req {switches / requests:5.1f}")


def _at(text):
    return datetime.fromisoformat(text).timestamp()


def _q(values, p):
    return values[min(len(values) - 1, int(p * len(values)))]


def _line(label, values):
    values = sorted(values)
    print(f"{label:34} p50 {_q(values, .5):7.2f}  p99 {_q(values, .99):7.2f}  "
          f"max {values[-1]:7.1f} ms")


def main(argv):
    seconds = float(argv[0]) if argv and "=" not in argv[0] else 10.0
    env = dict(a.split("=", 1) for a in argv if "=" in a)
    with Harness() as h:
        h.start_upstream()
        db = h.sqlite()
        if "ROOT" in env:
            harness_module.ROOT = Path(env.pop("ROOT"))
        gateway = h.start_gateway(db, workers=int(env.pop("WORKERS", 2)),
                                  threads=int(env.pop("THREADS", 512)), record=True,
                                  name="c1", env=env)
        ctx = scenarios.Context(h, gateway, scenarios.Params())
        script, _ = scenarios._scripts(ctx, "c1", json.dumps(scenarios.CHAT).encode())
        url = gateway.url + "/v1/chat/completions"
        run_wrk(url, script, connections=32, seconds=2)  # warm-up
        run_wrk(url, script, connections=1, seconds=2)
        conn = sqlite3.connect(db.url.split("sqlite:///", 1)[1])
        seen = conn.execute("SELECT count(*) FROM openai_django_call").fetchone()[0]
        before = _threads()
        result = run_wrk(url, script, connections=1, seconds=seconds)
        after = _threads()
        top = int(os.environ.get("TOP", "0"))
        if top:
            _print_threads(before, after, max(result.requests, 1), top)
        print(f"wrk c=1: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f}, p90 "
              f"{result.p90_ms:.2f}, p99 {result.p99_ms:.2f}, max {result.max_ms:.1f} ms")
        rows = conn.execute(
            "SELECT created, finished_at, latency_ms, upstream_latency_ms FROM "
            "openai_django_call ORDER BY created").fetchall()[seen:]
        rows = [r for r in rows if r[1] and r[2] is not None and r[3] is not None]
        print(f"{len(rows)} calls recorded")
        _line("latency_ms", [r[2] for r in rows])
        _line("upstream_latency_ms", [r[3] for r in rows])
        _line("latency - upstream", [r[2] - r[3] for r in rows])
        _line("finish -> next call's start", [(_at(b[0]) - _at(a[1])) * 1000
                                              for a, b in zip(rows, rows[1:])])
        cycles = [((_at(b[0]) - _at(a[0])) * 1000, a, b) for a, b in zip(rows, rows[1:])]
        _line("start -> next call's start", [c[0] for c in cycles])
        slowest = sorted(cycles, key=lambda c: -c[0])[:int(os.environ.get("SLOWEST", "20"))]
        for ms, a, b in slowest:
            print(f"  cycle {ms:7.2f}: in the call {(_at(a[1]) - _at(a[0])) * 1000:7.2f} "
                  f"(upstream {a[3]:6.2f}), then {(_at(b[0]) - _at(a[1])) * 1000:7.2f} to the next")


if __name__ == "__main__":
    main(sys.argv[1:])
