"""CPU of a database-pool hop on PostgreSQL, with Django's connection pool and without.

``DATABASE_URL=postgres://... python -m bench.pool_hop_bench [HOPS] [ROUNDS]``

Under ASGI each database step of a call is a hop to the gateway's pool of threads
(openai_django/threads.py). With README's option A (``CONN_MAX_AGE``) a pool thread keeps its
connection; with option B (``OPTIONS["pool"]``, ``CONN_MAX_AGE = 0``) it takes one from
Django's pool at its first query and gives it back at the hop's end (``release_pooled``).
This runs ``HOPS`` hops of ``SELECT 1`` under uvloop, ``ROUNDS`` times each way in fresh
processes, alternating, and prints the CPU (user + system, both threads) and the wall-clock
time of a hop. Nothing is written: any PostgreSQL database the URL reaches will do.
"""

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _query():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _inner(mode, hops):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    import uvloop
    from django.db import connections

    from openai_django import threads

    settings_dict = connections.settings["default"]
    if settings_dict["ENGINE"] != "django.db.backends.postgresql":
        raise SystemExit("DATABASE_URL must name a PostgreSQL database")
    if mode == "pool":
        settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}),
                                    "pool": {"min_size": 2, "max_size": 4}}
        settings_dict["CONN_MAX_AGE"] = 0
    else:
        settings_dict["CONN_MAX_AGE"] = 600

    async def main():
        for _ in range(200):  # the pool's threads and connections in place
            await threads.db(_query)()
        cpu, wall = _cpu(), time.perf_counter()
        for _ in range(hops):
            await threads.db(_query)()
        return (_cpu() - cpu) / hops * 1e6, (time.perf_counter() - wall) / hops * 1e6

    cpu_us, wall_us = uvloop.run(main())
    threads.shutdown()
    print(json.dumps({"mode": mode, "cpu_us": round(cpu_us), "wall_us": round(wall_us)}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inner"]:
        return _inner(argv[1], int(argv[2]))
    hops = int(argv[0]) if argv else 2000
    rounds = int(argv[1]) if len(argv) > 1 else 3
    results = {"pool": [], "kept": []}
    for _ in range(rounds):
        for mode in ("pool", "kept"):
            out = subprocess.run([sys.executable, "-m", "bench.pool_hop_bench", "--inner", mode,
                                  str(hops)], cwd=ROOT, capture_output=True, text=True,
                                 timeout=600, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.1f}; {rounds} rounds of {hops} hops (SELECT 1)")
    for mode, label in (("kept", "A, connection kept (CONN_MAX_AGE)"),
                        ("pool", "B, Django's pool (OPTIONS['pool'])")):
        cpu = sorted(r["cpu_us"] for r in results[mode])
        wall = sorted(r["wall_us"] for r in results[mode])
        print(f"{label:40} CPU a hop {cpu[0]}-{cpu[-1]} us, wall {wall[0]}-{wall[-1]} us")


if __name__ == "__main__":
    main()
