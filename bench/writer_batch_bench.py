"""What the record costs SQLite, batch by batch: the CPU of one group-commit batch
(``writer.Writer._write_batch``: N recorded calls started, the manager's 58-column INSERT,
and N finished, its UPDATE of the finish fields, in one transaction) and the WAL frames it
appends, beside the same 2N statements each committed on its own (``WRITER = False``: what
every call pays without the writer, and what a call alone pays with it).

    python -m bench.writer_batch_bench [SIZES=1,5,10,20] [BATCHES=300]

One thread, the bench's SQLite database (WAL, ``synchronous=NORMAL``), the rows a chat call
leaves (a prompt, an answer, tokens, an upstream request id and an object id of their own:
two indexes with a random key, each a page of its own a call). The two ways alternate batch
by batch (each goes first every other time, the garbage collector off during the clock);
each line is the median over the batches of the CPU of the writing alone (the values are
converted before the clock starts) and of the WAL frames (a page each, two ``pwrite`` calls
each) it appended. Under load the figure is higher: the leader's connection finds its page
cache stale (the other process wrote since) and waits for the GIL after each statement.
"""

import gc
import os
import statistics
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    sizes = [int(n) for n in (argv[0] if argv else "1,5,10,20").split(",")]
    batches = int(argv[1]) if len(argv) > 1 else 300
    sys.path.insert(0, ROOT)
    from bench.harness import Harness

    with Harness() as harness:
        db = harness.sqlite("writer-batch")
        os.environ.update(harness.django_env(db, OPENAI_DJANGO_RECORD="1",
                                             OPENAI_DJANGO_SQLITE_CHECKPOINT="0"))
        import django

        django.setup()
        from django.db import connection
        from django.utils import timezone

        from openai_django import sqlite_wal, writer
        from openai_django.models import Call
        from openai_django.recorder import FINISH_FIELDS

        connection.ensure_connection()
        if not writer._direct(connection):
            raise SystemExit("the writer's direct SQLite path is off (DEBUG query log?)")
        raw = connection.connection
        raw.execute("PRAGMA wal_autocheckpoint=0")  # frames counted from the WAL's size
        wal = db.url.removeprefix("sqlite:///") + "-wal"
        frame = sqlite_wal.wal_bytes(1, raw.execute("PRAGMA page_size").fetchone()[0]) - 32
        manager = Call.objects
        batched = writer.Writer("default")

        def one_by_one(batch):
            for statement in batch:
                writer.execute(connection, statement.sql, statement.params)

        ways = {"one batch, one commit": lambda batch: batched._write_batch(connection, batch),
                "each statement committed": one_by_one}

        def item(call, kind):
            sql, plan = manager._plan(connection, kind, None if kind == "insert"
                                      else FINISH_FIELDS)
            params = [convert(get(call)) for get, convert in plan]
            if kind == "update":
                params.append(Call._meta.pk.get_db_prep_value(call.pk, connection))
            return writer._Item(sql, params, kind)

        def started(n):
            return [Call(operation="createChatCompletion", method="POST",
                         path="/chat/completions", model="gpt-4o-mini", status="running",
                         request_body={"model": "gpt-4o-mini", "messages": [
                             {"role": "user", "content": "Say hello in five words. " * 4}]})
                    for _ in range(n)]

        def finish(call):
            call.status, call.outcome, call.finished_at = "succeeded", "ok", timezone.now()
            call.response_status, call.response_content_type = 200, "application/json"
            call.upstream_request_id = f"req_{uuid.uuid4().hex}"
            call.object_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            message = {"role": "assistant", "content": "Hello there, how are you?"}
            call.response_body = {"id": call.object_id, "object": "chat.completion",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": message}],
                                  "usage": {"prompt_tokens": 28, "completion_tokens": 7,
                                            "total_tokens": 35}}
            call.prompt_tokens, call.completion_tokens, call.total_tokens = 28, 7, 35
            call.cost_usd, call.latency_ms, call.upstream_latency_ms = 0.0000084, 3.1, 1.2

        print(f"{batches} batches a way and size, load {os.getloadavg()[0]:.1f}")
        for n in sizes:
            running = {name: started(n) for name in ways}
            for call in (c for calls in running.values() for c in calls):
                manager.record_new(call)
            cpu = {name: [] for name in ways}
            frames = {name: [] for name in ways}
            for round_ in range(batches):
                # Alternating which way goes first; the collector kept out of the clock.
                order = list(ways.items())[::1 if round_ % 2 else -1]
                gc.collect()
                for name, write in order:
                    fresh = started(n)
                    for call in running[name]:
                        finish(call)
                    batch = [*(item(c, "insert") for c in fresh),
                             *(item(c, "update") for c in running[name])]
                    size = os.path.getsize(wal)
                    gc.disable()
                    try:
                        began = time.thread_time()
                        write(batch)
                        cpu[name].append(time.thread_time() - began)
                    finally:
                        gc.enable()
                    errors = [i.error for i in batch if i.error is not None]
                    if errors:
                        raise errors[0]
                    frames[name].append((os.path.getsize(wal) - size) / frame)
                    running[name] = fresh
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for name in ways:
                us = 1e6 * statistics.median(cpu[name])
                pages = statistics.median(frames[name])
                print(f"{n:>3} started + {n:>3} finished, {name:<25}: {us:6.0f} us CPU "
                      f"({us / n:4.0f} a call), {pages:4.0f} WAL frames ({pages / n:4.1f} a call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
