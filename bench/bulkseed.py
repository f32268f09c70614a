"""Fill a SQLite call log with millions of calls fast, for the table-size scenario.

    DATABASE_URL=sqlite:////tmp/big.sqlite3 python -m bench.bulkseed --calls 10000000 --json out

``bench.seed`` builds every row in Python (the realistic mix, but row by row); this one has
SQLite generate them: one ``INSERT ... SELECT`` from a recursive CTE per million rows, with
the call table's indexes dropped first and built after (sorting each index once instead of
growing 13 B-trees row by row), the rollback journal instead of the WAL during the load (a
10 GB WAL would be written twice), and a bounded ``ANALYZE`` at the end. The rows are shaped
like the recorder's (a chat request and answer of a few hundred bytes, about 5% failures,
time-ordered UUIDv7 ids over ``--days``, 200 users with one to three keys each, a random
``upstream_request_id``); columns it does not set get the model's default, so a migration
that adds a column does not break it.

Prints (and writes to ``--json``) the figures: rows, seconds of the insert, of the index
builds, of ``ANALYZE``, and the file's size (measured: 1M calls in 34 s; 10M in 25 minutes on
the shared 2-core machine at load 10-16, 15 GB). Only SQLite: PostgreSQL would use
``generate_series`` the same way, not written yet.
"""

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.bulkseed")

#: Rows per INSERT ... SELECT statement (one transaction each).
CHUNK = 1_000_000
USERS = 200
SLOTS = 1024  # the users' weighted slots the rows pick from (a long tail of heavy users)

# (operation, path, model, share in 100). Chat dominates, as in a real log.
MIX = [("createChatCompletion", "/chat/completions", "gpt-4o-mini", 45),
       ("createChatCompletion", "/chat/completions", "gpt-4o", 15),
       ("createResponse", "/responses", "gpt-4o-mini", 15),
       ("createEmbedding", "/embeddings", "text-embedding-3-small", 15),
       ("createModeration", "/moderations", "omni-moderation-latest", 5),
       ("createImage", "/images/generations", "gpt-image-1", 5)]
LOREM = ("the quarterly invoice for the customer account was sent twice and the refund has not "
         "arrived yet please summarise the thread and draft a short polite answer in french "
         "with the order number and the expected date of the refund ") * 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args(argv)


def setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def _sql_literal(value):
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def column_expressions(start_ms, step_ms):
    """``{column: SQL expression}`` over the CTE's ``i`` and the users' slot ``u``."""
    ms = f"({start_ms} + CAST(i * {step_ms!r} AS INTEGER))"
    cases = []
    bound = 0
    for op, path, model, share in MIX:
        bound += share
        cases.append((bound, op, path, model))

    def case(index):
        parts = " ".join(f"WHEN i % 100 < {b} THEN '{row[index]}'" for b, *row in cases)
        return f"CASE {parts} END"

    failed = "(i % 20 = 7)"
    text = f"substr('{LOREM}', 1 + i % 97, 40 + i % 160)"
    return {
        # A UUIDv7 of that millisecond: 48 bits of time, version 7, 12 + 62 random bits.
        "id": (f"printf('%012x7%03x%016x', {ms}, abs(random()) % 4096, "
               f"(random() & 4611686018427387903) | -9223372036854775808)"),
        "created": f"strftime('%Y-%m-%d %H:%M:%f', {ms} / 1000.0, 'unixepoch')",
        "started_at": f"strftime('%Y-%m-%d %H:%M:%f', ({ms} + 1) / 1000.0, 'unixepoch')",
        "finished_at": f"strftime('%Y-%m-%d %H:%M:%f', ({ms} + 400 + i % 900) / 1000.0, "
                       f"'unixepoch')",
        "operation": case(0), "path": case(1), "model": case(2), "method": "'POST'",
        "status": f"CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END",
        "outcome": f"CASE WHEN {failed} THEN 'upstream_error' ELSE 'success' END",
        "mode": "'sync'", "source": "'http'", "stream": "(i % 5 = 0)",
        "request_headers": "'{}'", "response_headers": "'{}'",
        "request_body": (f"json_object('model', {case(2)}, 'messages', json_array(json_object("
                         f"'role', 'user', 'content', {text})))"),
        "prompt_preview": text,
        "response_status": f"CASE WHEN {failed} THEN 429 ELSE 200 END",
        "response_content_type": "'application/json'",
        "response_body": (f"CASE WHEN {failed} THEN json_object('error', json_object('message',"
                          f" 'Rate limit reached for requests', 'type', 'requests')) ELSE "
                          f"json_object('id', 'chatcmpl-' || i, 'object', 'chat.completion', "
                          f"'choices', json_array(json_object('index', 0, 'message', "
                          f"json_object('role', 'assistant', 'content', {text}), "
                          f"'finish_reason', 'stop')), 'usage', json_object('prompt_tokens', "
                          f"20 + i % 300, 'completion_tokens', 10 + i % 120)) END"),
        "error": (f"CASE WHEN {failed} THEN json_object('message', 'Rate limit reached for "
                  f"requests', 'type', 'requests', 'param', NULL, 'code', NULL) END"),
        "output_text": f"CASE WHEN {failed} THEN '' ELSE {text} END",
        "upstream_request_id": "'req_' || lower(hex(randomblob(16)))",
        "prompt_tokens": "20 + i % 300", "completion_tokens": "10 + i % 120",
        "total_tokens": "30 + i % 300 + i % 120",
        "cost_usd": "CAST((20 + i % 300) * 15 + (10 + i % 120) * 60 AS REAL) / 100000000",
        "latency_ms": "400.5 + i % 900", "upstream_latency_ms": "399.0 + i % 900",
        "first_byte_ms": "390.0 + i % 900",
        "attempts": "'[]'", "attempt_count": "1",
        "user_id": "u.user_id", "api_key_id": "u.key_id",
    }


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup_django()
    from django.db import connection

    from bench.seed import make_users
    from openai_django.models import Call

    if connection.vendor != "sqlite":
        sys.exit("bench.bulkseed writes SQLite only (PostgreSQL: python -m bench.seed)")
    table = Call._meta.db_table
    quote = connection.ops.quote_name
    started = time.perf_counter()
    rng = random.Random(42)
    users, keys = make_users(USERS, rng)
    slots = []
    total = sum(w for _, w in users)
    for user_id, weight in users:
        slots += [user_id] * max(1, round(weight / total * SLOTS))
    slots = slots[:SLOTS]
    now_ms = int(time.time() * 1000) - 3_600_000  # an hour ago: the gateway's rows come after
    start_ms = now_ms - args.days * 86_400_000
    step_ms = (now_ms - start_ms) / max(args.calls, 1)
    with connection.cursor() as cursor:
        have = cursor.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
        if have:
            sys.exit(f"{table} already holds {have} calls: bench.bulkseed fills an empty log")
        cursor.execute("DROP TABLE IF EXISTS bulkseed_slot")
        cursor.execute("CREATE TABLE bulkseed_slot (n INTEGER PRIMARY KEY, user_id, key_id)")
        cursor.executemany("INSERT INTO bulkseed_slot VALUES (%s, %s, %s)",
                           [(n, uid, keys[uid][n % len(keys[uid])])
                            for n, uid in enumerate(slots)])
        indexes = cursor.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s "
            "AND sql IS NOT NULL", [table]).fetchall()
        for name, _sql in indexes:
            cursor.execute(f"DROP INDEX {quote(name)}")
        cursor.execute("PRAGMA journal_mode=DELETE")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-262144")  # 256 MB
    exprs = column_expressions(start_ms, step_ms)
    columns, selects = [], []
    for f in Call._meta.concrete_fields:
        columns.append(quote(f.column))
        if f.column in exprs:
            selects.append(exprs[f.column])
        else:
            default = f.get_default()
            value = f.get_db_prep_save(default, connection)
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            if value is not None and hasattr(value, "dumps"):  # Django's JSON adapter
                value = value.dumps(value.adapted)
            selects.append(_sql_literal(value))
    insert_started = time.perf_counter()
    done = 0
    with connection.cursor() as cursor:
        while done < args.calls:
            upto = min(args.calls, done + CHUNK)
            cursor.execute("BEGIN")
            cursor.execute(
                f"INSERT INTO {quote(table)} ({', '.join(columns)}) "
                f"WITH RECURSIVE c(i) AS (SELECT {done} UNION ALL SELECT i + 1 FROM c "
                f"WHERE i < {upto - 1}) "
                f"SELECT {', '.join(selects)} FROM c JOIN bulkseed_slot u "
                f"ON u.n = (i * 7919) % {len(slots)}")
            cursor.execute("COMMIT")
            done = upto
            rate = done / (time.perf_counter() - insert_started)
            logger.info("%s/%s calls (%.0f rows/s)", done, args.calls, rate)
        insert_s = time.perf_counter() - insert_started
        index_started = time.perf_counter()
        for name, sql in indexes:
            t0 = time.perf_counter()
            cursor.execute(sql)
            logger.info("index %s: %.1f s", name, time.perf_counter() - t0)
        index_s = time.perf_counter() - index_started
        analyze_started = time.perf_counter()
        cursor.execute("DROP TABLE bulkseed_slot")
        cursor.execute("PRAGMA analysis_limit=2000")
        cursor.execute("ANALYZE")
        analyze_s = time.perf_counter() - analyze_started
        cursor.execute("PRAGMA journal_mode=WAL")
    path = connection.settings_dict["NAME"]
    figures = {"calls": args.calls, "seconds": round(time.perf_counter() - started, 1),
               "insert_s": round(insert_s, 1), "rows_per_s": round(args.calls / insert_s),
               "index_s": round(index_s, 1), "analyze_s": round(analyze_s, 1),
               "indexes": len(indexes), "file_mb": round(os.path.getsize(path) / 2**20)}
    logger.info("figures: %s", json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
