"""How to filter calls by tag: the ``CallTag`` index table against a scan of the tags column.

    DATABASE_URL=sqlite:////tmp/tags.sqlite3 python -m bench.tags_bench --calls 100000
    DATABASE_URL=postgres://user@127.0.0.1:55433/tags python -m bench.tags_bench --calls 100000

Seeds the log with ``bench.seed`` (realistic rows: bodies of a few hundred bytes to a few KB),
then tags about 60% of the calls with 1 to 3 tags from a long-tailed list of 50 (the most common
tag on ~25% of calls, the rarest on ~0.1%), writing both stores: the ``tags`` JSON column of the
call and one ``CallTag`` row per tag. Then times, best of ``--repeat``, the queries the admin
and the REST log run:

* ``newest 100 with tag``: the list's first page (101 rows, newest first);
* ``count with tag``;
* ``spend per tag, 30 days``: the usage dashboard's table;

each through ``CallTag`` (a join read in the order of its ``(tag, call)`` index; and the
first design, ``pk IN`` the tag's call ids ordered by date) and through the column
(``tags LIKE '%"t"%'``, what a normalised delimited text column costs too: a scan of the
rows), and on PostgreSQL also through a GIN index on ``tags`` (``jsonb @>``), built for the
run and dropped after. Also the cost of the INSERT of one tagged call (call row + tag rows
in one transaction) against an untagged one.
"""

import argparse
import json
import logging
import random
import statistics
import sys
import time

logger = logging.getLogger("bench.tags")

TAGS = [f"tag{i:02d}" for i in range(50)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    parser.add_argument("--json", help="write the figures here as JSON")
    return parser.parse_args(argv)


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return min(times), statistics.median(times)


def tag_everything(rng):
    from django.db import connection, transaction

    from openai_django.models import Call, CallTag

    if CallTag.objects.exists():
        return
    weights = [1 / (i + 1) ** 1.2 for i in range(len(TAGS))]
    rows = list(Call.objects.values_list("pk", "created"))
    tagged_ids, tag_rows, updates = set(), [], []
    for pk, created in rows:
        if rng.random() > 0.6:
            continue
        tags = []
        for _ in range(rng.randint(1, 3)):
            tag = rng.choices(TAGS, weights)[0]
            if tag not in tags:
                tags.append(tag)
        tagged_ids.add(pk)
        updates.append((json.dumps(tags), pk))
        tag_rows.extend(CallTag(call_id=pk, tag=t, created=created) for t in tags)
    table = connection.ops.quote_name(Call._meta.db_table)
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    pk_col = connection.ops.quote_name(Call._meta.pk.column)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {table} SET tags = %s{cast} WHERE {pk_col} = %s",
                           [(t, pk.hex if connection.vendor == "sqlite" else pk)
                            for t, pk in updates])
        CallTag.objects.bulk_create(tag_rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    logger.info("tagged %d of %d calls with %d tag rows", len(tagged_ids), len(rows),
                len(tag_rows))


def measure(args):
    import datetime

    from django.db import connection
    from django.db.models import Count
    from django.utils import timezone

    from openai_django import tagging
    from openai_django.models import Call, CallTag

    counts = dict(CallTag.objects.values_list("tag").annotate(n=Count("call_id"))
                  .values_list("tag", "n"))
    common = max(counts, key=counts.get)
    rare = min(counts, key=counts.get)
    total = Call.objects.count()
    figures = {"vendor": connection.vendor, "calls": total,
               "tagged": Call.objects.exclude(tags=[]).count(),
               "tag_rows": CallTag.objects.count(),
               "common": {"tag": common, "calls": counts[common]},
               "rare": {"tag": rare, "calls": counts[rare]}, "queries": {}}
    newest = Call.objects.order_by("-created").defer(
        "request_body", "response_body", "stream_events", "payload", "response_text",
        "output_text", "request_headers", "response_headers", "attempts", "error", "metadata")

    def by_index(tag):
        return tagging.with_tags(newest, [tag]).order_by(tagging.TAG_ORDER)

    def by_in_list(tag):  # the first try: pk IN (the tag's call ids), ordered by date
        return newest.filter(pk__in=CallTag.objects.filter(tag=tag).values("call_id"))

    def by_scan(tag):
        return newest.filter(tags__icontains=f'"{tag}"') if connection.vendor == "sqlite" \
            else newest.extra(where=["tags::text LIKE %s"], params=[f'%"{tag}"%'])

    def by_gin(tag):
        return newest.filter(tags__contains=[tag])

    plans = [("CallTag join", by_index), ("CallTag pk IN, by date", by_in_list),
             ("scan of tags column", by_scan)]
    gin = connection.vendor == "postgresql"
    if gin:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE INDEX IF NOT EXISTS od_bench_tags_gin ON "
                           f"{Call._meta.db_table} USING gin (tags jsonb_path_ops)")
            cursor.execute("ANALYZE")
        plans.append(("GIN on tags (PostgreSQL only)", by_gin))
    figures["queries"]["no tag filter | newest 100 (the floor)"] = best(
        lambda: list(newest.all()[:101]), args.repeat)
    try:
        for label, plan in plans:
            for which, tag in (("common", common), ("rare", rare)):
                expected = counts[tag]
                assert plan(tag).count() == expected, (label, tag)
                first_page = best(lambda plan=plan, tag=tag: list(plan(tag)[:101]),
                                  args.repeat)
                counted = best(lambda plan=plan, tag=tag: plan(tag).count(), args.repeat)
                figures["queries"][f"{label} | newest 100, {which} tag"] = first_page
                figures["queries"][f"{label} | count, {which} tag"] = counted
        now = timezone.now()
        low = now - datetime.timedelta(days=30)

        def per_tag_index():
            return tagging.spend_per_day_and_tag(low, now)

        def per_tag_scan():
            # What the column alone allows: read the period's rows, split in Python.
            sums = {}
            for tags, cost in Call.objects.filter(created__gte=low, created__lt=now) \
                    .exclude(tags=[]).values_list("tags", "cost_usd").iterator(2000):
                for tag in tags:
                    sums[tag] = sums.get(tag, 0) + (cost or 0)
            return sums

        figures["queries"]["CallTag join | spend per tag, 30 days"] = best(per_tag_index,
                                                                            args.repeat)
        figures["queries"]["scan of tags column | spend per tag, 30 days"] = best(
            per_tag_scan, args.repeat)
        from datetime import timedelta

        from django.core.cache import cache

        from openai_django.admin.tagging import tag_usage

        cache.clear()
        first_day, last_day = (now - timedelta(days=29)).date(), now.date()
        figures["queries"]["dashboard per-tag rows, 30 days, first view"] = best(
            lambda: (cache.clear(), tag_usage(first_day, last_day)), args.repeat)
        tag_usage(first_day, last_day)
        figures["queries"]["dashboard per-tag rows, 30 days, cached days"] = best(
            lambda: tag_usage(first_day, last_day), args.repeat)
        assert {tag for _day, tag in per_tag_index()} <= set(TAGS)
    finally:
        if gin:
            with connection.cursor() as cursor:
                cursor.execute("DROP INDEX IF EXISTS od_bench_tags_gin")
    figures["insert"] = insert_cost(args.repeat)
    return figures


def insert_cost(repeat, n=300):
    """Milliseconds per ``record_new`` of one call, untagged and with three tags (only the
    inserts are timed; the rows are deleted after each round)."""
    from django.db import connection

    from openai_django.models import Call, CallTag

    def one(tags):
        calls = [Call(operation="createChatCompletion", method="POST",
                      path="/chat/completions", model="gpt-4o-mini", tags=list(tags),
                      request_body={"model": "gpt-4o-mini", "messages": [
                          {"role": "user", "content": "hello"}]}) for _ in range(n)]
        started = time.perf_counter()
        for call in calls:
            Call.objects.record_new(call)
        took = (time.perf_counter() - started) * 1000
        ids = [c.pk for c in calls]
        CallTag.objects.filter(call_id__in=ids).delete()
        Call.objects.filter(pk__in=ids).delete()
        return took / n

    result = {}
    for _ in range(repeat):
        for label, tags in (("untagged", ()), ("3 tags", ("a", "b", "c"))):
            took = one(tags)
            result[label] = min(result.get(label, took), took)
    result["vendor"] = connection.vendor
    return result


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from bench import seed

    seed.main(["--calls", str(args.calls), "--days", "60"]
              + (["--database-url", args.database_url] if args.database_url else []))
    tag_everything(random.Random(7))
    figures = measure(args)
    width = max(len(k) for k in figures["queries"])
    print(f"\n{figures['vendor']}: {figures['calls']:,} calls, {figures['tagged']:,} tagged, "
          f"{figures['tag_rows']:,} tag rows; common tag on {figures['common']['calls']:,}, "
          f"rare on {figures['rare']['calls']:,}")
    print(f"{'query'.ljust(width)}  best ms  median ms")
    for label, (low, median) in figures["queries"].items():
        print(f"{label.ljust(width)}  {low:7.2f}  {median:9.2f}")
    print(f"record_new per call: untagged {figures['insert']['untagged']:.3f} ms, "
          f"3 tags {figures['insert']['3 tags']:.3f} ms")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2, default=str)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
