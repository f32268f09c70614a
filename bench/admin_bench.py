"""Time the admin's pages on a big log (seed it first with ``python -m bench.seed``).

    DATABASE_URL=sqlite:////tmp/bench.sqlite3 python -m bench.admin_bench --json out.json
    DATABASE_URL=postgres://user@127.0.0.1:55433/bench python -m bench.admin_bench

Each page is fetched in-process with Django's test client as a logged-in superuser (so the
figure is the server's whole work: middleware, queries, template; no network), once to warm
up and then ``--runs`` times; the table gives the median, the fastest and the slowest run and
the number of SQL queries. ``first_page_ms`` (the median of the call list's first page) is the
figure the benchmark suite checks. The exports are timed to their first line and over a
bounded number of rows (rows per second), with the process's peak memory before and after.
"""

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.admin")
LIST = "/admin/openai_django/call/"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--export-rows", type=int, default=100_000,
                        help="rows to read from the full export for its rate")
    parser.add_argument("--only", help="comma-separated page names to time")
    return parser.parse_args(argv)


def setup_django(database_url):
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pages():
    """``[(name, url)]``: the pages an admin opens, with values picked from the data."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from openai_django.models import Call

    User = get_user_model()
    newest = Call.objects.order_by("-created").only("created").first()
    chat = (Call.objects.filter(operation="createChatCompletion", status="succeeded")
            .order_by("-created").only("id").first())
    with_request_id = (Call.objects.exclude(upstream_request_id="").order_by("-created")
                       .only("id", "upstream_request_id")[1000:1001].first())
    heavy_user = (User._default_manager.filter(**{
        f"{User.USERNAME_FIELD}__startswith": "bench-user-"}).order_by("pk").first())
    rare_user = (User._default_manager.filter(**{
        f"{User.USERNAME_FIELD}__startswith": "bench-user-"}).order_by("-pk").first())
    key_id = Call.objects.filter(user=heavy_user).order_by("-created").values_list(
        "api_key_id", flat=True).first()
    day = timezone.localtime(newest.created) - timezone.timedelta(days=3)
    old_id = (Call.objects.filter(created__lt=newest.created - timezone.timedelta(days=60))
              .order_by("-created").values_list("pk", flat=True).first())
    today = timezone.localdate()
    return [
        ("list: first page", LIST),
        ("list: page 50", f"{LIST}?p=50"),
        ("list: operation=embeddings", f"{LIST}?operation=createEmbedding"),
        ("list: operation=edits (1%)", f"{LIST}?operation=createEdit"),
        ("list: model=gpt-4", f"{LIST}?model=gpt-4"),
        ("list: status=failed", f"{LIST}?status=failed"),
        ("list: has error", f"{LIST}?error=yes"),
        ("list: error=timeout", f"{LIST}?error=timeout"),
        ("list: is replay", f"{LIST}?replay=yes"),
        ("list: was replayed", f"{LIST}?replay=replayed"),
        ("list: user (heaviest)", f"{LIST}?user={heavy_user.get_username()}"),
        ("list: user (lightest)", f"{LIST}?user={rare_user.get_username()}"),
        ("list: key", f"{LIST}?key={key_id}"),
        ("list: one day", (f"{LIST}?created__year={day.year}&created__month={day.month}"
                          f"&created__day={day.day}")),
        ("list: month + model + failed", (f"{LIST}?created__year={day.year}"
                                         f"&created__month={day.month}&model=gpt-4o"
                                         f"&error=yes")),
        ("search: call id", f"{LIST}?q={old_id}"),
        ("search: upstream request id", f"{LIST}?q={with_request_id.upstream_request_id}"),
        ("search: common word", f"{LIST}?q=invoice"),
        ("search: rare word", f"{LIST}?q=quokka"),
        ("search: rare word, one day", (f"{LIST}?q=quokka&created__year={day.year}"
                                       f"&created__month={day.month}&created__day={day.day}")),
        ("call page (chat)", f"{LIST}{chat.pk}/change/"),
        ("compare report: replays", f"{LIST}compare/?replay=yes"),
        ("usage: 7 days, cold", (f"{LIST}usage/?start={today - timezone.timedelta(days=6)}"
                                f"&end={today}")),
        ("usage: 30 days (default), cold", f"{LIST}usage/"),
        ("usage: 30 days, cached", f"{LIST}usage/"),
        ("usage: 90 days, cold", (f"{LIST}usage/?start={today - timezone.timedelta(days=89)}"
                                 f"&end={today}")),
        ("usage: 90 days, cached", (f"{LIST}usage/?start={today - timezone.timedelta(days=89)}"
                                   f"&end={today}")),
        ("keys: list", "/admin/openai_django/apikey/"),
    ]


def time_page(client, url, runs, cold=False):
    """Median, min and max of ``runs`` fetches after a warm-up; ``cold`` empties Django's
    cache before each (the usage dashboard keeps past days there)."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm up (and check)
    status = response.status_code
    times = []
    queries = 0
    for _ in range(runs):
        if cold:
            cache.clear()
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            if getattr(response, "streaming", False):
                b"".join(response.streaming_content)
            times.append((time.perf_counter() - started) * 1000)
        queries = len(captured)
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1), "queries": queries, "status": status}


def time_export(client, url, rows, header=False):
    """Time to the first call's line, and rows per second over the first ``rows`` lines."""
    before = peak_rss_mb()
    started = time.perf_counter()
    response = client.get(url)
    stream = iter(response.streaming_content)
    if header:
        next(stream)
    next(stream)
    first = (time.perf_counter() - started) * 1000
    count = 1
    for _chunk in stream:
        count += 1
        if count >= rows:
            break
    elapsed = time.perf_counter() - started
    response.close()
    return {"first_line_ms": round(first, 1), "rows": count,
            "rows_per_s": round(count / elapsed), "seconds": round(elapsed, 1),
            "peak_rss_mb_before": round(before), "peak_rss_mb_after": round(peak_rss_mb())}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup_django(args.database_url)
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from openai_django.admin.pagination import table_estimate
    from openai_django.models import Call

    setup_test_environment()  # the test client's response.context hooks, ALLOWED_HOSTS
    User = get_user_model()
    admin, _created = User._default_manager.get_or_create(
        **{User.USERNAME_FIELD: "bench-admin"},
        defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(admin)
    total = table_estimate(Call, "default")
    logger.info("%s, about %s calls; %s runs a page", connection.vendor, total, args.runs)
    only = set(args.only.split(",")) if args.only else None
    results = {}
    for name, url in pages():
        if only and name not in only:
            continue
        results[name] = {"url": url, **time_page(client, url, args.runs,
                                                 cold=name.endswith(", cold"))}
        logger.info("%-32s %8.1f ms  (%s queries)", name, results[name]["median_ms"],
                    results[name]["queries"])
    exports = {}
    if not only or "export" in only:
        for fmt in ("jsonl", "csv"):
            exports[f"export {fmt}: all calls"] = time_export(
                client, f"{LIST}export/?format={fmt}", args.export_rows, header=fmt == "csv")
            logger.info("export %s: first line %.0f ms, %s rows/s", fmt,
                        exports[f"export {fmt}: all calls"]["first_line_ms"],
                        exports[f"export {fmt}: all calls"]["rows_per_s"])
    figures = {
        "vendor": connection.vendor,
        "calls": total,
        "runs": args.runs,
        "load_average": os.getloadavg(),
        "first_page_ms": results.get("list: first page", {}).get("median_ms"),
        "pages": results,
        "exports": exports,
    }
    table = ["", f"{'page':34} {'median':>9} {'min':>8} {'max':>8} {'queries':>8}"]
    for name, r in results.items():
        table.append(f"{name:34} {r['median_ms']:>7.1f}ms {r['min_ms']:>6.1f}ms "
                     f"{r['max_ms']:>6.1f}ms {r['queries']:>8}")
    for name, r in exports.items():
        table.append(f"{name:34} first line {r['first_line_ms']} ms, {r['rows_per_s']} rows/s "
                     f"over {r['rows']} rows, peak RSS {r['peak_rss_mb_before']}"
                     f"->{r['peak_rss_mb_after']} MB")
    logger.info("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    else:
        out = ROOT / "bench" / "results" / f"admin-{connection.vendor}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
