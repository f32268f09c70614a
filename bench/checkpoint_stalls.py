"""Which slow calls at c=1 sit next to a WAL checkpoint: wrk at c=1 against a recording
gateway, the WAL index polled meanwhile, and the slowest cycles set beside the moments the log
started over (the FULL pass the writers wait for, then the first commit's sync of the new
log's header).

    python -m bench.checkpoint_stalls [--calls 1000000] [--seconds 10] [--json out.json]

``--calls N`` serves the bench's cached N-call table (``bench.sizes_bench``'s cache, seeded
first if missing; 0: a fresh database). The gateway is granian WSGI, 2 workers x 512 threads,
recording on, the bench's settings. A thread polls the ``-shm`` header (``sqlite_wal.
wal_frames``: frames in the log, frames copied) every 0.5 ms; a drop in the frame count is a
restart. Each of the slowest cycles (one call's start to the next one's, from the recorded
rows) is printed with its distance to the nearest restart.
"""

import argparse
import json
import sqlite3
import sys
import threading
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slowest", type=int, default=12)
    parser.add_argument("--json", help="write the figures here as JSON")
    return parser.parse_args(argv)


def _restarts(samples):
    """The moments the log's frame count dropped (it started over)."""
    return [t for (_, before), (t, after) in zip(samples, samples[1:])
            if before and after and after[0] < before[0]]


def main(argv=None):
    args = parse_args(argv)
    from bench import scenarios, sizes_bench
    from bench.c1_stalls import _at
    from bench.harness import Harness
    from bench.loadgen import run_wrk
    from openai_django import sqlite_wal

    with Harness() as harness:
        harness.start_upstream()
        db = sizes_bench.cached_table(harness, args.calls)[0] if args.calls else harness.sqlite()
        gateway = harness.start_gateway(db, workers=2, threads=512, record=True,
                                        name="checkpoint-stalls")
        ctx = scenarios.Context(harness, gateway, scenarios.Params())
        script, _ = scenarios._scripts(ctx, "stalls", json.dumps(scenarios.CHAT).encode())
        url = gateway.url + "/v1/chat/completions"
        run_wrk(url, script, connections=1, seconds=3)  # warm-up
        path = db.url.split("sqlite:///", 1)[1]
        samples, done = [], threading.Event()

        def poll():
            last = None
            while not done.is_set():
                frames = sqlite_wal.wal_frames(path)
                if frames != last:
                    samples.append((time.time(), frames))
                    last = frames
                time.sleep(0.0005)

        poller = threading.Thread(target=poll, daemon=True)
        conn = sqlite3.connect(path)
        try:
            seen = conn.execute("SELECT max(rowid) FROM openai_django_call").fetchone()[0] or 0
            poller.start()
            result = run_wrk(url, script, connections=1, seconds=args.seconds)
            done.set()
            poller.join()
            rows = conn.execute("SELECT created, latency_ms FROM openai_django_call "
                                "WHERE rowid > ? ORDER BY created", (seen,)).fetchall()
        finally:
            conn.close()
    at = [_at(created) for created, _ in rows]
    restarts = _restarts(samples)
    cycles = sorted((((b - a) * 1000, a, latency) for a, b, (_, latency)
                     in zip(at, at[1:], rows)), reverse=True)[:args.slowest]
    slowest = [{"cycle_ms": round(ms, 2), "latency_ms": latency,
                "nearest_restart_ms": round(min((abs(r - a) * 1000 for r in restarts),
                                                default=-1), 1)}
               for ms, a, latency in cycles]
    figures = {"calls_in_table": args.calls, "requests": result.requests,
               "rps": round(result.rps, 1), "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
               "max_ms": result.max_ms, "recorded": len(rows), "restarts": len(restarts),
               "slowest": slowest}
    print(f"{args.calls:,} calls in the table: wrk c=1 {result.rps:.0f} req/s, p50 "
          f"{result.p50_ms:.2f}, p99 {result.p99_ms:.2f}, max {result.max_ms:.1f} ms; "
          f"{len(rows)} calls recorded, the log started over {len(restarts)} times")
    for row in slowest:
        print(f"  cycle {row['cycle_ms']:7.2f} ms (the call's latency_ms {row['latency_ms']:6.2f}),"
              f" the nearest restart {row['nearest_restart_ms']:7.1f} ms away")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
