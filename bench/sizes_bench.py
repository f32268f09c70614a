"""Scenario ``sizes`` (``python -m bench --only sizes``): what recording costs as the work grows.

Two halves, each measured side by side in one run:

* **Body size**: chat prompts of 1 KB, 100 KB and 1 MB, and image generations answering 1, 10
  and 100 images (``b64_json``: the recorder keeps each image as an artifact), sent one after
  another (c=1, keep-alive) to the gateway recording, the same gateway with recording off
  (``OPENAI_DJANGO_RECORD=0``) and the stand-in directly, round by round. Per size: p50 of
  each, what the recording adds (recorded - unrecorded, the median of the per-round
  differences) and the gateway's CPU per call (its process tree's user + system time over the
  calls: steadier than wall-clock time on a shared machine), and what one recorded call left
  behind (request and response kept in the row, artifacts and their bytes).
* **Table size**: gateways recording into logs already holding 10k, 1M and 10M calls (SQLite,
  seeded by :mod:`bench.bulkseed` and kept in ``$BENCH_CACHE_DIR``, default
  ``~/.cache/openai-django-bench/tables``, so a rerun reuses them), loaded in alternation: the
  insert cost of a recorded call (c=1 added p50/p99 and CPU per call, c=64 req/s) and the
  admin's first page of the call list (in-process, logged-in superuser, median of 5, with
  the slowest SQL query of the page).

    python -m bench --only sizes [--quick] [--sizes-tables 10000,1000000,10000000]
    python -m bench.sizes_bench --prepare-tables 10000,1000000,10000000   # seed the cache only

The Django-side helpers run as ``python -m bench.sizes_bench --cleanup|--admin-page --json OUT``
with the harness's environment (``DATABASE_URL`` ...).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, Database

log = logging.getLogger("bench.sizes")

KB = 1024
#: Bump when bench/bulkseed.py's rows change shape, so cached tables are rebuilt.
SEED_VERSION = 1
LIST = "/admin/openai_django/call/"


@dataclass
class SizeParams:
    prompt_bytes: tuple = (KB, 100 * KB, 1024 * KB)
    image_counts: tuple = (1, 10, 100)
    image_size: str = "1024x1024"
    rounds: int = 5
    requests: int = 20  # per side per round
    tables: tuple = (10_000, 1_000_000, 10_000_000)

    @classmethod
    def quick(cls):
        return cls(prompt_bytes=(KB, 100 * KB), image_counts=(1, 2), image_size="256x256",
                   rounds=1, requests=3, tables=(1_000, 10_000))


def label(calls):
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if calls >= size and calls % size == 0:
            return f"{calls // size}{unit}"
    return str(calls)


# -- body size -------------------------------------------------------------------------------


def body_cases(sp):
    """``{name: (path, body bytes, what)}``."""
    cases = {}
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    for size in sp.prompt_bytes:
        envelope = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}
        room = size - len(json.dumps(envelope))
        content = (filler * (room // len(filler) + 1))[:max(room, 1)]
        envelope["messages"][0]["content"] = content
        name = f"prompt_{size // KB}kb" if size < KB * KB else f"prompt_{size // KB // KB}mb"
        cases[name] = ("/chat/completions", json.dumps(envelope).encode(),
                       {"prompt_bytes": size})
    for n in sp.image_counts:
        body = {"model": "gpt-image-1", "prompt": "a lighthouse at dusk, watercolour", "n": n,
                "size": sp.image_size}
        cases[f"images_{n}"] = ("/images/generations", json.dumps(body).encode(),
                                {"images": n})
    return cases


def _post(conn, path, body, headers):
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    return (response.status, payload, (time.perf_counter() - started) * 1000,
            response.getheader("X-Call-Id"))


def _get_json(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def recorded_call(ctx, gateway, call_id, wait=10.0):
    """The call's record read back through ``GET /v1/calls/<id>`` (with the client's key),
    once it is finished (at most ``wait`` seconds): ``(record, seconds waited)``."""
    headers = {"Authorization": f"Bearer {ctx.harness.client_key}"}
    started = time.perf_counter()
    while True:
        status, data = _get_json(gateway.port, f"/v1/calls/{call_id}", headers)
        if status == 200 and data.get("status") not in ("queued", "running"):
            return data, time.perf_counter() - started
        if time.perf_counter() - started > wait:
            return (data if status == 200 else {"http_status": status, "body": data},
                    time.perf_counter() - started)
        time.sleep(0.05)


def record_size(record):
    """Bytes one call left in the log: its row's bodies (as JSON) and its artifacts' files."""
    row = sum(len(json.dumps(record.get(k)).encode()) for k in
              ("request", "response", "response_text", "stream_events", "output_text"))
    artifacts = record.get("artifacts") or []
    return {"row_body_bytes": row, "artifacts": len(artifacts),
            "artifact_bytes": sum(int(a.get("bytes") or 0) for a in artifacts)}


def warm(ctx, gateway, path, body, calls=20):
    """Calls on new connections, so that every worker of a fresh gateway has served some
    before a measured round (a worker's first call imports and connects: seconds on a loaded
    machine, longer than a quick round)."""
    for _ in range(calls):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
        try:
            _post(conn, path, body, ctx.gw_headers())
        finally:
            conn.close()


def body_sizes(ctx, unrecorded, sp):
    from bench.scenarios import _median, _pct

    targets = [("recorded", ctx.gateway.port, "/v1", ctx.gw_headers(), ctx.gateway),
               ("unrecorded", unrecorded.port, "/v1", ctx.gw_headers(), unrecorded),
               ("direct", ctx.upstream.port, "/v1", ctx.direct_headers(), None)]
    out = {}
    for name, (path, body, what) in body_cases(sp).items():
        conns = {t[0]: http.client.HTTPConnection("127.0.0.1", t[1], timeout=300)
                 for t in targets}
        try:
            answers = {}
            for side, _port, prefix, headers, _server in targets:  # warm-up and check
                status, payload, _ms, call_id = _post(conns[side], prefix + path, body, headers)
                answers[side] = (status, payload, call_id)
            if any(a[0] != 200 for a in answers.values()):
                out[name] = {**what, "request_bytes": len(body), "skipped": "; ".join(
                    f"{side} answered {a[0]}: {a[1][:200].decode('utf-8', 'replace')}"
                    for side, a in answers.items() if a[0] != 200)}
                continue
            times = {t[0]: [] for t in targets}
            cpu = {t[0]: [] for t in targets}
            per_round = {t[0]: [] for t in targets}
            last_call = None
            errors = 0
            for _ in range(sp.rounds):
                for side, _port, prefix, headers, server in targets:
                    before = server.cpu_seconds() if server else None
                    mine = []
                    for _ in range(sp.requests):
                        status, payload, ms, call_id = _post(conns[side], prefix + path, body,
                                                             headers)
                        errors += status != 200
                        mine.append(ms)
                        if side == "recorded":
                            last_call = call_id
                    if server:  # CPU seconds of the server's processes over these calls
                        cpu[side].append(server.cpu_seconds() - before)
                    times[side].extend(mine)
                    per_round[side].append(statistics.median(mine))
        finally:
            for conn in conns.values():
                conn.close()
        record, waited = recorded_call(ctx, ctx.gateway, last_call)
        figures = {**what, "request_bytes": len(body),
                   "response_bytes": len(answers["recorded"][1]),
                   "requests": sp.rounds * sp.requests, "errors": errors}
        calls = sp.rounds * sp.requests
        for side in times:
            figures[f"{side}_p50_ms"] = _pct(times[side], 50)
            figures[f"{side}_p99_ms"] = _pct(times[side], 99)
            if cpu[side]:  # over all rounds: /proc counts CPU in 10 ms ticks
                figures[f"{side}_cpu_ms_per_call"] = round(sum(cpu[side]) / calls * 1000, 3)
        figures["recording_added_p50_ms"] = _median(
            [a - b for a, b in zip(per_round["recorded"], per_round["unrecorded"])])
        figures["gateway_added_p50_ms"] = _median(
            [a - b for a, b in zip(per_round["recorded"], per_round["direct"])])
        figures["recording_cpu_ms_per_call"] = round(
            figures["recorded_cpu_ms_per_call"] - figures["unrecorded_cpu_ms_per_call"], 3)
        figures["record_status"] = record.get("status")
        figures["record_wait_s"] = round(waited, 3)
        figures.update(record_size(record))
        out[name] = figures
        log.info("sizes %s: %s", name, figures)
    return out


# -- table size ------------------------------------------------------------------------------


def cache_dir():
    base = os.environ.get("BENCH_CACHE_DIR") or os.path.expanduser(
        "~/.cache/openai-django-bench")
    return Path(base) / "tables"


def schema_key():
    """The migrations and the seeder's version: a cached table is reused only while both are
    the same (a new migration could rewrite a 10M-row table for minutes)."""
    names = sorted(p.name for p in (ROOT / "openai_django" / "migrations").glob("0*.py"))
    return hashlib.sha1(json.dumps([SEED_VERSION, names]).encode()).hexdigest()[:10]


def cached_table(harness, calls):
    """A SQLite log holding ``calls`` seeded calls, from the cache or seeded now:
    ``(Database, seed figures)``; the figures say ``reused`` and the seconds seeding took."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"calls-{calls}-{schema_key()}.sqlite3"
    marker = path.with_suffix(".json")
    db = Database("sqlite", f"sqlite:///{path}")
    lock = path.with_suffix(".seeding")
    while lock.exists() and _alive(lock):  # another run is seeding this table: wait for it
        log.warning("waiting for %s (seeding, pid %s)", path, lock.read_text().strip())
        time.sleep(5)
    if path.exists() and marker.exists():
        figures = json.loads(marker.read_text())
        harness.prepare(db)  # the client key (and a no-op migrate)
        return db, {**figures, "reused": True}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    need = calls * 1600  # 1.5 KB a row with its indexes (measured: 1M calls, 1.5 GB)
    if free < need * 1.2:
        raise RuntimeError(f"{calls} calls need about {need / 2**30:.1f} GB in {folder}; "
                           f"{free / 2**30:.1f} GB free")
    started = time.perf_counter()
    lock.write_text(str(os.getpid()))
    try:
        harness.prepare(db)
        out = subprocess.run([sys.executable, "-m", "bench.bulkseed", "--calls", str(calls)],
                             cwd=ROOT, env=harness.django_env(db), capture_output=True,
                             text=True, timeout=7200)
    finally:
        lock.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"seeding {calls} calls failed: {out.stderr[-2000:]}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["prepare_and_seed_s"] = round(time.perf_counter() - started, 1)
    marker.write_text(json.dumps(figures, indent=2))
    return db, {**figures, "reused": False}


def _alive(lock):
    try:
        os.kill(int(lock.read_text().strip()), 0)
    except (ValueError, OSError):
        return False
    return True


def django_helper(harness, db, flag, timeout=600):
    out_path = Path(harness.workdir) / f"sizes-{flag.strip('-')}-{os.getpid()}.json"
    result = subprocess.run([sys.executable, "-m", "bench.sizes_bench", flag, "--json",
                             str(out_path)], cwd=ROOT, env=harness.django_env(db),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"bench.sizes_bench {flag} failed: {result.stderr[-2000:]}")
    return json.loads(out_path.read_text())


def table_sizes(ctx, sp, *, server, workers, threads):
    from bench import scenarios

    harness = ctx.harness
    dbs, seeds = {}, {}
    for calls in sp.tables:
        db, seed = cached_table(harness, calls)
        dbs[label(calls)] = db
        seeds[label(calls)] = seed
    gateways = {}
    out = {"tables": {name: {"calls_seeded": seed["calls"], "seed": seed}
                      for name, seed in seeds.items()}}
    try:
        for name, db in dbs.items():
            out["tables"][name]["removed_earlier_bench_calls"] = django_helper(
                harness, db, "--cleanup")["removed"]
            gateways[name] = harness.start_gateway(db, server=server, workers=workers,
                                                   threads=threads, name=f"gateway-{name}")
            scenarios.check_contract(ctx, gateways[name])
        for g in gateways.values():
            warm(ctx, g, "/v1/chat/completions", json.dumps(scenarios.CHAT).encode())
        lat = scenarios.compare_latency(ctx, gateways)
        gw_script, direct_script = scenarios._scripts(ctx, "sizes-tput",
                                                      json.dumps(scenarios.CHAT).encode())
        targets = [(name, g.url + "/v1/chat/completions", gw_script, g)
                   for name, g in gateways.items()]
        _, tput = scenarios._saturate(ctx.params, targets)
        for name in gateways:
            t = out["tables"][name]
            for key in ("p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms",
                        "cpu_us_per_request", "errors"):
                t[f"c1_{key}"] = lat.get(f"{name}_{key}")
            for key in ("rps", "p50_ms", "p99_ms", "errors", "cpu_us_per_request"):
                t[f"c{tput['connections']}_{key}"] = tput.get(f"{name}_{key}")
        out["direct_c1_p50_ms"] = lat["direct_p50_ms"]
        out["connections"] = tput["connections"]
    finally:
        for g in gateways.values():
            harness.stop_gateway(g)
    # The database's share alone, in one process (no HTTP, no server): CPU and wall time.
    for name, figures in insert_probe(harness, dbs, rounds=1 if len(sp.tables) < 3 and
                                      sp.tables[-1] < 100_000 else 3).items():
        out["tables"][name].update({f"db_insert_{k}": v for k, v in figures.items()})
    for name, db in dbs.items():
        page = django_helper(harness, db, "--admin-page")
        out["tables"][name].update(page)
        out["tables"][name]["removed_bench_calls"] = django_helper(
            harness, db, "--cleanup")["removed"]
    names = list(out["tables"])
    first, last = out["tables"][names[0]], out["tables"][names[-1]]
    out["largest_vs_smallest"] = {
        "c1_added_p50_ms": _diff(last.get("c1_added_p50_ms"), first.get("c1_added_p50_ms")),
        "cpu_ratio": _ratio(last.get("c1_cpu_us_per_request"),
                            first.get("c1_cpu_us_per_request")),
        "rps_ratio": _ratio(last.get(f"c{out['connections']}_rps"),
                            first.get(f"c{out['connections']}_rps")),
        "first_page_ratio": _ratio(last.get("first_page_ms"), first.get("first_page_ms")),
        "db_insert_cpu_ratio": _ratio(last.get("db_insert_cpu_us_per_call"),
                                      first.get("db_insert_cpu_us_per_call")),
        "db_insert_wall_p50_ratio": _ratio(last.get("db_insert_wall_p50_us"),
                                           first.get("db_insert_wall_p50_us")),
    }
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _diff(a, b):
    return round(a - b, 3) if a is not None and b is not None else None


def sizes(ctx, *, quick, server, workers, threads, tables=None, parts=("bodies", "tables")):
    """The whole scenario: body sizes, then table sizes (``tables`` overrides the counts;
    ``parts`` runs one half only)."""
    sp = SizeParams.quick() if quick else SizeParams()
    if tables:
        sp.tables = tuple(tables)
    harness = ctx.harness
    out = {"loadavg_before": list(os.getloadavg())}
    if "tables" in parts and "bodies" not in parts:
        out.update(table_sizes(ctx, sp, server=server, workers=workers, threads=threads))
        out["loadavg_after"] = list(os.getloadavg())
        return out
    off = harness.start_gateway(_db_of(ctx), server=server, workers=workers, threads=threads,
                                record=False, name="gateway-sizes-norec")
    try:
        warm(ctx, off, "/v1/chat/completions", json.dumps({
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode())
        out["bodies"] = body_sizes(ctx, off, sp)
    finally:
        harness.stop_gateway(off)
    out["loadavg_middle"] = list(os.getloadavg())
    if "tables" in parts:
        out.update(table_sizes(ctx, sp, server=server, workers=workers, threads=threads))
    out["loadavg_after"] = list(os.getloadavg())
    return out


def _db_of(ctx):
    url = ctx.gateway.env["DATABASE_URL"]
    return Database("postgres" if url.startswith("postgres") else "sqlite", url)


# -- the table rows of ``python -m bench`` ----------------------------------------------------


def table_rows(x, row):
    for name, f in (x.get("bodies") or {}).items():
        title = f"13 sizes: {name}"
        if "skipped" in f:
            row(title, "not measured", f["skipped"][:160])
            continue
        row(title, "p50 recorded / off / direct (ms), recording adds",
            f"{f['recorded_p50_ms']:.2f} / {f['unrecorded_p50_ms']:.2f}",
            f["direct_p50_ms"], f["recording_added_p50_ms"])
        row(title, "CPU per call recorded / off (ms), recording's",
            f"{f.get('recorded_cpu_ms_per_call')} / {f.get('unrecorded_cpu_ms_per_call')}",
            None, f.get("recording_cpu_ms_per_call"))
        row(title, "kept: row bodies bytes / artifacts (bytes)", f["row_body_bytes"],
            None, f"{f['artifacts']} ({f['artifact_bytes']:,})")
    c = x.get("connections")
    for name, t in (x.get("tables") or {}).items():
        title = f"13 sizes: {name} calls in the table"
        row(title, "c=1 added p50 / p99 (ms), CPU us/call",
            f"{t.get('c1_added_p50_ms')} / {t.get('c1_added_p99_ms')}", x.get("direct_c1_p50_ms"),
            t.get("c1_cpu_us_per_request"))
        row(title, f"c={c} req/s, p99 (ms)", t.get(f"c{c}_rps"), None, t.get(f"c{c}_p99_ms"))
        row(title, "admin first page (ms), queries", t.get("first_page_ms"), None,
            t.get("first_page_queries"))
        row(title, "DB alone: insert + finish CPU us/call, wall p50 / p99 (us)",
            t.get("db_insert_cpu_us_per_call"), None,
            f"{t.get('db_insert_wall_p50_us')} / {t.get('db_insert_wall_p99_us')}")
        seed = t.get("seed") or {}
        row(title, "seeding (s), file MB", "reused" if seed.get("reused") else
            seed.get("seconds"), None, seed.get("file_mb"))
    g = x.get("largest_vs_smallest")
    if g:
        row("13 sizes: largest / smallest table", "c=1 added p50 (ms) / CPU / req/s ratio",
            g["c1_added_p50_ms"], g["cpu_ratio"], g["rps_ratio"])
        row("13 sizes: largest / smallest table", "admin first page ratio; DB alone: "
            "insert CPU / wall p50 ratio", g["first_page_ratio"], g.get("db_insert_cpu_ratio"),
            g.get("db_insert_wall_p50_ratio"))


# -- Django-side helpers (run with the harness's environment) --------------------------------


def _cleanup():
    """Delete the calls the benchmark's own key recorded into a cached table (earlier runs),
    so the table holds the seeded count again."""
    from openai_django.models import Call

    removed, _ = Call.objects.filter(user__username="bench").delete()
    return {"removed": removed}


def _admin_page(runs=5):
    """The call list's first page as a logged-in superuser: median of ``runs`` after a
    warm-up, the number of queries and the slowest one."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()
    User = get_user_model()
    admin, _ = User._default_manager.get_or_create(
        **{User.USERNAME_FIELD: "bench-admin"}, defaults={"is_staff": True,
                                                          "is_superuser": True})
    client = Client()
    client.force_login(admin)
    response = client.get(LIST)
    if response.status_code != 200:
        raise RuntimeError(f"{LIST} answered {response.status_code}")
    times, slowest = [], (0.0, "")
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            client.get(LIST)
            times.append((time.perf_counter() - started) * 1000)
        for q in captured.captured_queries:
            if float(q["time"]) * 1000 >= slowest[0]:
                slowest = (float(q["time"]) * 1000, q["sql"])
    return {"first_page_ms": round(statistics.median(times), 1),
            "first_page_max_ms": round(max(times), 1),
            "first_page_queries": len(captured.captured_queries),
            "first_page_slowest_query_ms": round(slowest[0], 1),
            "first_page_slowest_query": slowest[1][:300]}


def _insert_probe(calls=300):
    """The database's share of a recorded call, in one process: ``calls`` times, a call row
    inserted (its own transaction, like the write-ahead start) and finished (an UPDATE of the
    answer's fields); CPU (``process_time``) and wall time per call, then the rows deleted."""
    import secrets

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from openai_django.models import APIKey, Call

    user = get_user_model().objects.get(username="bench")
    key = APIKey.objects.filter(user=user).first()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
    answer = {"id": "chatcmpl-probe", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    walls, cpus, ids = [], [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        with transaction.atomic():
            call = Call.objects.create(
                operation="createChatCompletion", method="POST", path="/chat/completions",
                model="gpt-4o-mini", status="running", user=user, api_key=key,
                request_body=body, prompt_preview="Say hello", started_at=timezone.now())
        call.status, call.outcome, call.finished_at = "succeeded", "success", timezone.now()
        call.response_status, call.response_body, call.output_text = 200, answer, "Hello!"
        call.upstream_request_id = f"req_{secrets.token_hex(16)}"
        call.prompt_tokens, call.completion_tokens, call.total_tokens = 9, 3, 12
        with transaction.atomic():
            call.save(update_fields=["status", "outcome", "finished_at", "response_status",
                                     "response_body", "output_text", "upstream_request_id",
                                     "prompt_tokens", "completion_tokens", "total_tokens"])
        cpus.append((time.process_time() - cpu) * 1e6)
        walls.append((time.perf_counter() - wall) * 1e6)
        ids.append(call.pk)
    Call.objects.filter(pk__in=ids).delete()
    walls.sort()
    return {"calls": calls, "cpu_us_per_call": round(sum(cpus) / calls, 1),
            "wall_p50_us": round(walls[calls // 2], 1),
            "wall_p99_us": round(walls[min(calls - 1, int(calls * 0.99))], 1)}


def insert_probe(harness, dbs, rounds=3):
    """:func:`_insert_probe` on each database, interleaved round by round: medians."""
    from bench.scenarios import _median

    runs = {name: [] for name in dbs}
    for _ in range(rounds):
        for name, db in dbs.items():
            runs[name].append(django_helper(harness, db, "--insert-probe"))
    return {name: {key: _median([r[key] for r in rs]) for key in
                   ("cpu_us_per_call", "wall_p50_us", "wall_p99_us")}
            for name, rs in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cleanup", action="store_true")
    parser.add_argument("--admin-page", action="store_true")
    parser.add_argument("--insert-probe", action="store_true")
    parser.add_argument("--prepare-tables", help="comma-separated call counts to seed")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.prepare_tables:
        from bench.harness import Harness

        with Harness() as harness:
            for calls in args.prepare_tables.split(","):
                _db, figures = cached_table(harness, int(calls))
                print(json.dumps(figures))
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    figures = (_cleanup() if args.cleanup else _insert_probe() if args.insert_probe
               else _admin_page())
    Path(args.json).write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
