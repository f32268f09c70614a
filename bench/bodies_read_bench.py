"""What reading many large request bodies costs, one by one and prefetched
(``Call.objects.prefetch_related("request_body")``), on SQLite and on PostgreSQL.

    python -m bench.bodies_read_bench [--calls 2000] [--kb 20] [--runs 3]
        [--databases sqlite,postgres] [--json out.json]

Each database is the bench's own (a fresh SQLite file; PostgreSQL: the project's service if it
runs, else a throwaway cluster), seeded with ``--calls`` finished chat calls whose system
prompt is ``--kb`` KB, so every body is kept in its ``RequestBody`` row. Each run reads them
all with ``.iterator(chunk_size=2000)`` and every ``call.request_body``, once one by one and
once prefetched (which goes first alternates run by run), then the admin's JSONL export of
the same calls (``admin.export.jsonl_lines``, which prefetches). The figures are wall-clock
microseconds a call (the client's side: PostgreSQL's round trips are in them) and the
queries each way made, counted with ``connection.execute_wrapper``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=20, help="each call's system prompt, in KB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--json", help="write the figures here as JSON, by database")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    sys.path.insert(0, ROOT)
    from bench.harness import Harness

    results = {}
    with Harness() as harness:
        for kind in args.databases.split(","):
            db = harness.sqlite("bodies-read") if kind == "sqlite" else harness.postgres()
            if db is None:
                print(f"{kind}: no database here, skipped")
                continue
            command = [sys.executable, "-m", "bench.bodies_read_bench", "--child",
                       "--calls", str(args.calls), "--kb", str(args.kb),
                       "--runs", str(args.runs)]
            out = subprocess.run(command, cwd=ROOT, env=harness.django_env(db),
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
            figures = results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{kind}: {args.calls} calls, a {args.kb} KB prompt each, "
                  f"load {os.getloadavg()[0]:.1f}")
            for run in figures["runs"]:
                print(f"  one by one {run['one_by_one_us']:6.0f} us a call "
                      f"({run['one_by_one_queries']} queries), prefetched "
                      f"{run['prefetched_us']:6.0f} us ({run['prefetched_queries']} queries), "
                      f"JSONL export {run['export_ms']:5.0f} ms, {run['export_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


def child(args):
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from openai_django.admin.export import jsonl_lines
    from openai_django.models import Call, RequestBody

    user, _ = get_user_model().objects.get_or_create(username="bodies-read")
    prompt = ("otters hold hands while they sleep, " * (args.kb * 1024 // 36 + 1))[:args.kb * 1024]
    for i in range(args.calls):
        call = Call(operation="createChatCompletion", method="POST", path="/chat/completions",
                    user=user, model="gpt-4o-mini", status=Call.Status.SUCCEEDED,
                    request_body={"model": "gpt-4o-mini", "messages": [
                        {"role": "system", "content": prompt},
                        {"role": "user", "content": f"Question {i}"}]},
                    response_body={"object": "chat.completion"},
                    prompt_tokens=10, completion_tokens=5, total_tokens=15)
        Call.objects.record_new(call)
    kept = RequestBody.objects.count()
    if kept < args.calls:
        raise SystemExit(f"only {kept} of {args.calls} bodies were kept apart")

    queries = [0]

    def count(execute, sql, params, many, context):
        queries[0] += 1
        return execute(sql, params, many, context)

    def read(queryset):
        queries[0] = 0
        with connection.execute_wrapper(count):
            began = time.perf_counter()
            total = sum(len(c.request_body["messages"]) for c in queryset.iterator(chunk_size=2000))
            elapsed = time.perf_counter() - began
        assert total == 2 * args.calls, total
        return 1e6 * elapsed / args.calls, queries[0]

    ways = {"one_by_one": lambda: Call.objects.all(),
            "prefetched": lambda: Call.objects.prefetch_related("request_body")}
    runs = []
    for run in range(args.runs):
        figures = {}
        for name, queryset in list(ways.items())[::1 if run % 2 == 0 else -1]:
            figures[f"{name}_us"], figures[f"{name}_queries"] = read(queryset())
        began = time.perf_counter()
        size = sum(len(line) for line in jsonl_lines(Call.objects.order_by("created")))
        figures["export_ms"] = 1e3 * (time.perf_counter() - began)
        figures["export_mb"] = size / 1e6
        runs.append(figures)
    print(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
