"""What checkpointing a stream costs: ``STREAM_CHECKPOINT_SECONDS`` = None, 2.0, 0.2 side by side.

One granian WSGI gateway per setting (the harness's: SQLite WAL as the demo configures it, a
database each, ``DEBUG=False``), the stand-in upstream sending 200-event streams 5 ms apart;
the gateways take turns, ``--batch`` streams each per round, one keep-alive connection
(``bench.loadgen.SSEConnection``), so drift of the machine spreads over all three. Measured
per stream:

* UPDATEs of its row: a trigger on ``openai_django_call`` (added to each benchmark database,
  one INSERT into a side table per UPDATE) counts them; "extra" is over the None gateway;
* event gaps at the client, p50/p99, against the same client reading the stand-in directly;
* gateway CPU (user + system of the server's process tree, /proc), over its batches.

    .venv/bin/python -m bench.checkpoint_bench [--streams 30] [--batch 10] [--json OUT]

The demo settings do not read ``STREAM_CHECKPOINT_SECONDS`` from the environment, so each
gateway runs a settings module generated in the harness's folder (the demo's, overridden).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import statistics
import time

from bench.harness import ROOT, Harness, tree_cpu_seconds
from bench.loadgen import SSEConnection

SETTINGS = ("None", "2.0", "0.2")
EVENTS, GAP_MS = 200, 5
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count"}],
        "stream": True}

_MODULE = '''from project.settings import *  # noqa: F403
from project.settings import OPENAI_DJANGO

OPENAI_DJANGO = {{**OPENAI_DJANGO, "STREAM_CHECKPOINT_SECONDS": {value}}}
'''

_TRIGGER = """
CREATE TABLE IF NOT EXISTS bench_updates (call_id TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS bench_count_updates AFTER UPDATE ON openai_django_call
BEGIN INSERT INTO bench_updates (call_id) VALUES (NEW.id); END;
"""


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def _streams(url, headers, count):
    conn = SSEConnection(url, headers)
    body = json.dumps(CHAT).encode()
    try:
        return [await conn.stream(body, timeout=60) for _ in range(count)]
    finally:
        conn.close()


def _updates(db_path):
    with contextlib.closing(sqlite3.connect(db_path, timeout=20)) as conn:
        return dict(conn.execute("SELECT call_id, COUNT(*) FROM bench_updates GROUP BY call_id"))


def run(streams, batch, writer):
    os.environ["BENCH_WRITER"] = "1" if writer else "0"
    rounds = max(1, -(-streams // batch))
    with Harness() as harness:
        harness.start_upstream()
        harness.configure_upstream(events=EVENTS, gap_ms=GAP_MS, ttft_ms=0)
        gateways = {}
        for value in SETTINGS:
            name = "cp_" + value.replace(".", "_").lower()
            folder = os.path.join(harness.workdir, name)
            os.makedirs(folder)
            with open(os.path.join(folder, "checkpoint_settings.py"), "w") as fh:
                fh.write(_MODULE.format(value=value))
            db = harness.sqlite(name)
            db_path = db.url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(db_path)) as conn:
                conn.executescript(_TRIGGER)
            gateway = harness.start_gateway(
                db, server="granian-wsgi", workers=1, threads=8, name=name,
                env={"DJANGO_SETTINGS_MODULE": "checkpoint_settings",
                     "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])})
            gateways[value] = {"gateway": gateway, "db": db_path, "results": [], "cpu": 0.0}
        headers = {"Authorization": f"Bearer {harness.client_key}"}
        direct = {"results": []}
        for gw in gateways.values():  # warm-up: imports, connections, prepared statements
            asyncio.run(_streams(gw["gateway"].url + "/v1/chat/completions", headers, 2))
        for _ in range(rounds):
            for gw in gateways.values():
                pid = gw["gateway"].proc.pid
                before = tree_cpu_seconds(pid)
                gw["results"] += asyncio.run(_streams(
                    gw["gateway"].url + "/v1/chat/completions", headers, batch))
                gw["cpu"] += tree_cpu_seconds(pid) - before
            direct["results"] += asyncio.run(_streams(
                harness.upstream.url + "/chat/completions", {"Authorization": "Bearer x"},
                max(1, batch // 2)))
        time.sleep(0.5)  # the last record's finish is written after the stream's end
        rows = {}
        for value, gw in gateways.items():
            updates = _updates(gw["db"])
            results = gw["results"]
            counts = [updates.get(r.headers.get("x-call-id", "").replace("-", ""), 0)
                      for r in results]
            gaps = [g for r in results for g in r.gaps_ms()]
            rows[value] = {
                "streams": len(results),
                "ok": sum(r.ok for r in results),
                "events_per_stream": statistics.median(len(r.event_times) for r in results),
                "updates_per_stream": statistics.mean(counts),
                "gap_p50_ms": percentile(gaps, 50),
                "gap_p99_ms": percentile(gaps, 99),
                "stream_ms": statistics.median(
                    (r.event_times[-1] - r.event_times[0]) * 1000 for r in results
                    if r.event_times),
                "cpu_ms_per_stream": gw["cpu"] / len(results) * 1000,
            }
        base = rows["None"]["updates_per_stream"]
        for row in rows.values():
            row["extra_updates"] = row["updates_per_stream"] - base
        dgaps = [g for r in direct["results"] for g in r.gaps_ms()]
        rows["direct"] = {"streams": len(direct["results"]),
                          "ok": sum(r.ok for r in direct["results"]),
                          "gap_p50_ms": percentile(dgaps, 50),
                          "gap_p99_ms": percentile(dgaps, 99),
                          "stream_ms": statistics.median(
                              (r.event_times[-1] - r.event_times[0]) * 1000
                              for r in direct["results"] if r.event_times)}
    return rows


def table(rows):
    lines = ["| STREAM_CHECKPOINT_SECONDS | streams ok | UPDATEs/stream | extra | "
             "gap p50 ms | gap p99 ms | stream ms | gateway CPU ms/stream |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if name == "direct":
            lines.append(f"| stand-in direct | {row['ok']}/{row['streams']} | - | - | "
                         f"{row['gap_p50_ms']:.2f} | {row['gap_p99_ms']:.2f} | "
                         f"{row['stream_ms']:.0f} | - |")
            continue
        lines.append(f"| {name} | {row['ok']}/{row['streams']} | "
                     f"{row['updates_per_stream']:.1f} | {row['extra_updates']:+.1f} | "
                     f"{row['gap_p50_ms']:.2f} | {row['gap_p99_ms']:.2f} | "
                     f"{row['stream_ms']:.0f} | {row['cpu_ms_per_stream']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=30, help="streams per setting")
    parser.add_argument("--batch", type=int, default=10, help="streams per turn")
    parser.add_argument("--writer", type=int, default=int(os.environ.get("BENCH_WRITER", "1")),
                        help="OPENAI_DJANGO_WRITER of the gateways (the harness's default: 1)")
    parser.add_argument("--json", help="write the figures there")
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING)
    load = os.getloadavg()
    started = time.monotonic()
    rows = run(args.streams, args.batch, bool(args.writer))
    print(f"{EVENTS}-event streams, {GAP_MS} ms apart upstream; granian WSGI, 1 worker x 8 "
          f"threads, SQLite WAL, WRITER={args.writer}; load {load[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; {time.monotonic() - started:.0f} s")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "events": EVENTS, "gap_ms": GAP_MS,
                       "writer": args.writer, "load": [load, os.getloadavg()]}, fh, indent=2)


if __name__ == "__main__":
    main()
