"""The CPU of one hop to the database pool and back: asgiref's ``sync_to_async`` beside the
gateway's own ``threads.db`` (openai_django/threads.py), under asyncio and uvloop.

    python -m bench.hop_bench [ROUNDS=8] [HOPS=3000]

Each round awaits ``HOPS`` hops of a no-op with each, in turn, on one loop; the figure is the
process's CPU time (both threads: the loop's and the pool's) over the hops, median and
minimum of the rounds. The pool is the gateway's (``DB_THREADS`` threads) for both.
"""

import asyncio
import os
import statistics
import sys
import time


def _noop(value=None):
    return value


async def _rounds(rounds, hops):
    from asgiref.sync import sync_to_async

    from openai_django import threads

    variants = {
        "asgiref sync_to_async": sync_to_async(_noop, thread_sensitive=False,
                                               executor=threads.executor()),
        "openai_django.threads.db": threads.db(_noop),
    }
    figures = {name: [] for name in variants}
    for hop in variants.values():  # warm-up: the pool's threads started
        for _ in range(200):
            await hop(1)
    for _ in range(rounds):
        for name, hop in variants.items():
            started = time.process_time()
            for _ in range(hops):
                await hop(1)
            figures[name].append(1e6 * (time.process_time() - started) / hops)
    return figures


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    rounds = int(argv[0]) if argv else 8
    hops = int(argv[1]) if len(argv) > 1 else 3000
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    import uvloop

    print(f"load average {os.getloadavg()[0]:.1f}; {rounds} rounds of {hops} hops")
    for loop_name, run in (("asyncio", asyncio.run), ("uvloop", uvloop.run)):
        figures = run(_rounds(rounds, hops))
        for name, values in figures.items():
            print(f"{loop_name:8s} {name:26s} CPU a hop: median {statistics.median(values):6.1f}"
                  f" us, min {min(values):6.1f} us")
        from openai_django import threads

        threads.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
