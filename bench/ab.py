"""Gateways side by side, interleaved round by round: two trees, or two settings, one stand-in.

    python -m bench.ab CONC ROUNDS SECONDS LABEL:THREADS:WORKERS:RECORD[:ENV=V,ROOT=/tree] ...
    python -m bench.ab 1,64 3 5 after:512:2:1 before:512:2:1:ROOT=/tmp/before \\
        after-off:512:2:0 before-off:512:2:0:ROOT=/tmp/before

Each spec is a gateway under granian WSGI (``THREADS`` a worker, ``WORKERS`` processes,
``RECORD`` 1 or 0), with environment variables for it (``OPENAI_DJANGO_FAIR_CONCURRENCY=1``)
and ``ROOT``: another checkout to serve (``git worktree add /tmp/before <commit>`` with a
``.venv`` link), for a before/after of a change, and ``DB=own``: a SQLite database of its
own, migrated by its own tree (for a change of the schema). Every round runs wrk on each gateway in
turn at each concurrency: the machine's drift lands on all of them alike. Prints one line a
round and gateway: req/s, p50, p99, max, gateway CPU a request. All gateways share one
SQLite database unless ``DB=own``: a recording gateway's WAL checkpoints can stall
another's calls, so read c=1 tails from one gateway at a time. ``AB_DB=postgres`` for PostgreSQL.
"""

import json
import os
import sys
from pathlib import Path

import bench.harness as harness_module
from bench import scenarios
from bench.harness import Harness
from bench.loadgen import run_wrk


def _spec(text):
    label, threads, workers, record, *envs = text.split(":")
    env = dict(e.split("=", 1) for e in (envs[0].split(",") if envs and envs[0] else []))
    return label, int(threads), int(workers), record == "1", env


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4:
        raise SystemExit(__doc__)
    concurrencies = [int(c) for c in argv[0].split(",")]
    rounds, seconds = int(argv[1]), float(argv[2])
    specs = [_spec(text) for text in argv[3:]]
    with Harness() as h:
        h.start_upstream()
        db = h.postgres() if os.environ.get("AB_DB") == "postgres" else h.sqlite()
        own_root, gateways = harness_module.ROOT, []
        try:
            for label, threads, workers, record, env in specs:
                root = env.pop("ROOT", None)
                own_db = env.pop("DB", None) == "own"
                harness_module.ROOT = Path(root) if root else own_root
                # DB=own: a SQLite database of its own, migrated by its own tree (a schema
                # change's before and after; no other gateway's checkpoints in its calls).
                gateway_db = h.sqlite(f"ab-{label}") if own_db else db
                gateways.append((label, h.start_gateway(gateway_db, workers=workers,
                                                        threads=threads, record=record,
                                                        name=label, env=env)))
        finally:
            harness_module.ROOT = own_root
        ctx = scenarios.Context(h, gateways[0][1], scenarios.Params())
        script, _ = scenarios._scripts(ctx, "ab", json.dumps(scenarios.CHAT).encode())
        for _, gateway in gateways:  # warm-up
            run_wrk(gateway.url + "/v1/chat/completions", script, connections=32, seconds=2)
        for round_ in range(rounds):
            for conc in concurrencies:
                for label, gateway in gateways:
                    cpu = gateway.cpu_seconds()
                    r = run_wrk(gateway.url + "/v1/chat/completions", script,
                                connections=conc, seconds=seconds)
                    per = (gateway.cpu_seconds() - cpu) / max(r.requests, 1) * 1e6
                    print(f"round {round_ + 1} {label:>14} c={conc:<3} rps={r.rps:8.1f} "
                          f"p50={r.p50_ms:7.2f} p99={r.p99_ms:8.2f} max={r.max_ms:8.1f} "
                          f"cpu/req={per:7.0f}us errors={r.errors}", flush=True)
        print("load average after", os.getloadavg())


if __name__ == "__main__":
    main()
