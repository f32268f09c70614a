"""``python -m bench``: run every scenario, print the table, write ``bench/results/latest.json``.

One command measures the gateway against the stand-in upstream called directly, side by side in
one run, on this machine: see ``bench/README.md`` for what each figure means and
``docs/performance.md`` for the published table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from bench import harness as harness_module
from bench import operations_bench, scenarios, sdk_latency, sizes_bench
from bench.harness import (
    ASGI_SERVERS,
    ROOT,
    SERVER_COMMANDS,
    Harness,
    port_range,
    raise_fd_limit,
    raise_somaxconn,
)

log = logging.getLogger("bench")

ALL = ["latency", "sdk_latency", "responses", "speech", "throughput", "streaming",
       "responses_stream", "slow_streams", "large_bodies", "asgi_latency", "asgi_throughput",
       "asgi_streaming", "databases", "celery", "admin", "serving", "soak", "soak_floor",
       "upstreams", "limits", "sizes", "tail"]
QUICK = ["latency", "sdk_latency", "responses", "speech", "throughput", "streaming",
         "responses_stream", "slow_streams", "large_bodies", "asgi_latency", "asgi_throughput",
         "asgi_streaming"]
ASGI_SCENARIOS = ("asgi_latency", "asgi_throughput", "asgi_streaming")
# Only when asked: ``--peers`` (installs LiteLLM once), or ``--only peers`` (an installed one).
OPT_IN = ["peers"]

# (scenario, figure key path, comparison, target, label). Lower-is-better unless ">=".
TARGETS = [
    ("latency", "added_p50_ms", "<=", 1.0, "added latency p50, c=1 (ms)"),
    ("latency", "added_p99_ms", "<=", 5.0, "added latency p99, c=1 (ms)"),
    ("sdk_latency", "added_p99_ms", "<=", 5.0, "added latency p99, c=1, openai SDK client (ms)"),
    ("throughput", "recorded_rps", ">=", 1500, "throughput, whole machine, recording on (req/s)"),
    ("throughput", "recorded_vs_unrecorded", ">=", 0.8, "recorded / unrecorded throughput"),
    ("streaming", "ttfe_added_p50_ms", "<=", 2.0, "stream time to first event, added p50 (ms)"),
    ("streaming", "gap_gateway_dev_p99_ms", "<=", 2.0,
     "event gap deviation p99 at client, upstream 20 ms (ms)"),
    ("streaming", "coalesced_gateway", "<=", 0, "coalesced events (gap < 5 ms)"),
    ("slow_streams", "largest_zero_error_streams", ">=", 1000,
     "concurrent 10 s streams with zero errors"),
    ("admin", "first_page_ms", "<=", 200, "admin call list, 1M calls, first page (ms)"),
    ("asgi_latency", "asgi_added_p50_ms", "<=", 1.0, "ASGI: added latency p50, c=1 (ms)"),
    ("asgi_throughput", "asgi_vs_wsgi", ">=", 0.7, "ASGI / WSGI throughput, recording on"),
    ("asgi_streaming", "asgi_ttfe_added_p50_ms", "<=", 2.0,
     "ASGI: stream time to first event, added p50 (ms)"),
    ("asgi_streaming", "asgi_gap_dev_p99_ms", "<=", 2.0,
     "ASGI: event gap deviation p99, upstream 20 ms (ms)"),
    ("asgi_streaming", "asgi_coalesced", "<=", 0, "ASGI: coalesced events (gap < 5 ms)"),
    ("tail", "sqlite_c32_p99_over_p50", "<=", 3.0, "tail: p99 / p50 at c=32, SQLite"),
    ("tail", "sqlite_c64_p99_over_p50", "<=", 3.0, "tail: p99 / p50 at c=64, SQLite"),
    ("tail", "postgres_c32_p99_over_p50", "<=", 3.0, "tail: p99 / p50 at c=32, PostgreSQL"),
    ("tail", "postgres_c64_p99_over_p50", "<=", 3.0, "tail: p99 / p50 at c=64, PostgreSQL"),
    ("soak", "errors", "<=", 0, "soak: stream errors, one ASGI worker"),
    ("soak", "records_not_succeeded", "<=", 0, "soak: calls not recorded succeeded"),
    ("peers", "litellm_columns_behind_count", "<=", 0,
     "gateway ahead of LiteLLM (no DB) on every column (columns behind)"),
    ("peers", "litellm_db_columns_behind_count", "<=", 0,
     "gateway ahead of LiteLLM + PostgreSQL spend logs on every column (columns behind)"),
]


def machine():
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    versions = {}
    for name in ("django", "rest_framework", "granian", "gunicorn", "orjson", "urllib3"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "versions": versions}


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def dig(data, scenario, key):
    value = data.get(scenario)
    if not isinstance(value, dict):
        return None
    return value.get(key)


def verdicts(results):
    rows = []
    for scenario, key, op, target, label in TARGETS:
        value = dig(results, scenario, key)
        if value is None:
            rows.append({"target": label, "goal": f"{op} {target}", "measured": None,
                         "met": None})
            continue
        met = value >= target if op == ">=" else value <= target
        if met:
            miss = None
        elif op == ">=":
            miss = f"short by {target - value:g}" if isinstance(value, (int, float)) else None
        else:
            miss = f"over by {value - target:g}"
        detail = dig(results, scenario, key.removesuffix("_count"))
        if miss and key.endswith("_count") and isinstance(detail, list):
            miss += ": " + ", ".join(map(str, detail))  # e.g. which columns (peers)
        rows.append({"target": label, "goal": f"{op} {target}", "measured": value, "met": met,
                     "miss": miss})
    return rows


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def SIDES(figures):
    """The gateways of an ASGI-vs-WSGI scenario's figures: wsgi, asgi (the lean entry) and,
    with ``--asgi-django``, asgi_django (Django's handler)."""
    return [s for s in ("wsgi", "asgi", "asgi_plain", "asgi_django") if f"{s}_errors" in figures
            or f"{s}_rps" in figures or f"{s}_ttfe_p50_ms" in figures]


def table(results):
    """The human table: every figure, then every target with its verdict."""
    lines = []
    s = {k: v for k, v in results["scenarios"].items() if "error" not in v}

    def row(scenario, figure, gateway, direct=None, added=None):
        lines.append(f"| {scenario} | {figure} | {fmt(gateway)} | {fmt(direct)} | {fmt(added)} |")

    lines.append("| scenario | figure | gateway | direct / reference | added / ratio |")
    lines.append("|---|---|---|---|---|")
    if "latency" in s:
        x = s["latency"]
        row("1 latency c=1", "p50 (ms)", x["gateway_p50_ms"], x["direct_p50_ms"],
            x["added_p50_ms"])
        row("1 latency c=1", "p99 (ms)", x["gateway_p99_ms"], x["direct_p99_ms"],
            x["added_p99_ms"])
    if "sdk_latency" in s:
        x = s["sdk_latency"]
        row("1c latency c=1, openai SDK client", "p50 (ms)", x["gateway_p50_ms"],
            x["direct_p50_ms"], x["added_p50_ms"])
        row("1c latency c=1, openai SDK client", "p99 (ms)", x["gateway_p99_ms"],
            x["direct_p99_ms"], x["added_p99_ms"])
    if "responses" in s:
        x = s["responses"]
        row("1b createResponse c=1", "p50 (ms)", x["gateway_p50_ms"], x["direct_p50_ms"],
            x["added_p50_ms"])
        row("1b createResponse c=1", "p99 (ms)", x["gateway_p99_ms"], x["direct_p99_ms"],
            x["added_p99_ms"])
    operations_bench.table_rows(s, row)  # 1d speech, 3b createResponse stream
    if "throughput" in s:
        x = s["throughput"]
        row("2 throughput", f"req/s, recording on, c={x['connections']}", x["recorded_rps"],
            x.get("direct_rps"), None)
        if "unrecorded_rps" in x:
            row("2 throughput", "req/s, recording off (ratio on/off)", x["unrecorded_rps"], None,
                x.get("recorded_vs_unrecorded"))
        row("2 throughput", "gateway CPU per request (us)",
            x.get("recorded_cpu_us_per_request"), None, None)
    if "streaming" in s:
        x = s["streaming"]
        row("3 streaming", "time to first event p50 (ms)", x["ttfe_gateway_p50_ms"],
            x["ttfe_direct_p50_ms"], x["ttfe_added_p50_ms"])
        row("3 streaming", f"event gap p50, upstream {fmt(x['gap_upstream_ms'])} ms",
            x["gap_gateway_p50_ms"], x["gap_direct_p50_ms"], None)
        row("3 streaming", "gap deviation p99 / max (ms)", x["gap_gateway_dev_p99_ms"],
            x["gap_direct_dev_p99_ms"], x["gap_gateway_dev_max_ms"])
        row("3 streaming", "coalesced events", x["coalesced_gateway"], x["coalesced_direct"])
    if "slow_streams" in s:
        x = s["slow_streams"]
        for run in x.get("runs", []):
            row("4 slow streams", f"{run['streams']} x {fmt(x['stream_seconds'])} s: errors, "
                f"peak RSS MB", run["errors"], run["rss_peak_mb"], run["rss_per_stream_kb"])
        row("4 slow streams", "largest N with zero errors", x["largest_zero_error_streams"])
    for key, title in (("asgi_latency", "9 ASGI vs WSGI chat c=1"),
                       ("asgi_responses", "9 ASGI vs WSGI createResponse c=1")):
        if key in s:
            x = s[key]
            for side in SIDES(x):
                row(title, f"{side} p50 / p99 (ms), added p50 / p99",
                    f"{fmt(x[f'{side}_p50_ms'])} / {fmt(x[f'{side}_p99_ms'])}",
                    f"{fmt(x['direct_p50_ms'])} / {fmt(x['direct_p99_ms'])}",
                    f"{fmt(x[f'{side}_added_p50_ms'])} / {fmt(x[f'{side}_added_p99_ms'])}")
                row(title, f"{side} gateway CPU per request, c=1 (us)",
                    x.get(f"{side}_cpu_us_per_request"))
    if "asgi_throughput" in s:
        x = s["asgi_throughput"]
        for side in SIDES(x):
            row("9 ASGI vs WSGI throughput", f"{side} req/s, recording on, c={x['connections']}"
                f" (CPU us/request)", x[f"{side}_rps"], x.get("direct_rps"),
                x.get(f"{side}_cpu_us_per_request"))
        row("9 ASGI vs WSGI throughput", "ASGI / WSGI", x.get("asgi_vs_wsgi"))
        for side, what in (("asgi_plain", "asyncio + h11"), ("asgi_django", "Django's handler")):
            if f"{side}_vs_wsgi" in x:
                row("9 ASGI vs WSGI throughput", f"ASGI ({what}) / WSGI", x[f"{side}_vs_wsgi"])
    if "asgi_streaming" in s:
        x = s["asgi_streaming"]
        for side in SIDES(x):
            row("9 ASGI vs WSGI streaming", f"{side} time to first event p50 (ms)",
                x[f"{side}_ttfe_p50_ms"], x["direct_ttfe_p50_ms"], x[f"{side}_ttfe_added_p50_ms"])
            row("9 ASGI vs WSGI streaming", f"{side} gap deviation p50 / p99 (ms), coalesced",
                f"{fmt(x[f'{side}_gap_dev_p50_ms'])} / {fmt(x[f'{side}_gap_dev_p99_ms'])}",
                f"{fmt(x['direct_gap_dev_p50_ms'])} / {fmt(x['direct_gap_dev_p99_ms'])}",
                x[f"{side}_coalesced"])
    if "soak" in s:
        x = s["soak"]
        title = (f"10 soak {x['streams']:,} x {fmt(x['stream_seconds'])} s, 1 {x['server']} "
                 f"worker, HTTP/{x.get('upstream_http', '1.1')} upstream")
        row(title, "errors (kinds)", x["errors"], str(x["error_kinds"] or "-")[:120])
        row(title, "RSS idle / plateau MB, KB per stream", x["rss_idle_mb"],
            x["rss_plateau_mb"], x["rss_per_stream_kb"])
        row(title, "open fds idle / peak (limit)", x["fds_idle"], x["fds_peak"],
            x["fd_limit_soft"])
        row(title, "gateway CPU at plateau (cores); per event, all in (us)",
            x["cpu_cores_plateau"], x.get("cpu_us_per_event_all_in"))
        row(title, f"gap deviation p50 / p99 (ms), events {fmt(x['interval_ms'])} ms apart",
            x["gap_dev_p50_ms"], x["gap_dev_p99_ms"], x["gap_dev_max_ms"])
        row(title, "records succeeded", x["records_succeeded"], None,
            str(x["records"])[:120])
    for label, x in (s.get("soak_floor") or {}).items():
        if not isinstance(x, dict):  # the scenario's seconds, or its error
            continue
        title = (f"10b soak floor, {label}: {x['streams']:,} x {fmt(x['seconds'])} s, "
                 "1 uvicorn worker")
        row(title, "errors; open at once (fds peak - idle)", x["errors"],
            x["fds_peak"] - x["fds_idle"], None)
        row(title, "server CPU at plateau (cores); stand-in (cores)", x["cpu_cores_plateau"],
            x["upstream_cpu_cores_plateau"], None)
        row(title, f"gap deviation p50 / p99 (ms), events {fmt(x['interval_ms'])} ms apart",
            x["gap_dev_p50_ms"], x["gap_dev_p99_ms"], None)
    if "upstreams" in s and "single_p50_ms" in s["upstreams"]:
        x = s["upstreams"]
        title = "11 upstreams, Python API c=1"
        row(title, "ten UPSTREAMS p50 (ms), vs BASE_URL; added", x["ten_p50_ms"],
            x["single_p50_ms"], x["ten_added_p50_ms"])
        row(title, "fallback after a 429 p50 (ms), vs BASE_URL; added", x["fallback_p50_ms"],
            x["single_p50_ms"], x["fallback_added_p50_ms"])
        row(title, "route CPU (us): one, ten warm, ten cold", x["route_single_us"],
            x["route_warm_us"], x["route_cold_us"])
    if "limits" in s:
        x = s["limits"]
        row("12 limits c=1", "p50 (ms), LIMITS off (direct, added)", x["off_p50_ms"],
            x["direct_p50_ms"], None)
        row("12 limits c=1", "p50 (ms), no allowance: the lookup (added vs off)",
            x["baseline_p50_ms"], None, x["lookup_added_p50_ms"])
        for mode in x["modes"]:
            row("12 limits c=1", f"p50 / p99 (ms), budgets + limits, {mode} (added vs off)",
                f"{fmt(x[f'limits_{mode}_p50_ms'])} / {fmt(x[f'limits_{mode}_p99_ms'])}",
                None, f"{fmt(x[f'added_p50_ms_{mode}'])} / {fmt(x[f'added_p99_ms_{mode}'])}")
            row(f"12 limits c={x['connections']}", f"req/s, {mode} (off; ratio to off)",
                x[f"limits_{mode}_rps_c64"], x["off_rps_c64"], x[f"rps_ratio_c64_{mode}"])
    for where, x in (("", s.get("limits")), (" PostgreSQL", (s.get("limits") or {}).get(
            "postgres"))):
        if isinstance(x, dict):
            row(f"12 limits{where}", "errors: off / no allowance / " + " / ".join(x["modes"]),
                " / ".join(str(x[f"{label}_errors"]) for label in
                           ["off", "baseline", *[f"limits_{m}" for m in x["modes"]]]))
    if isinstance(s.get("limits", {}).get("postgres"), dict):
        x = s["limits"]["postgres"]
        for mode in x["modes"]:
            row("12 limits PostgreSQL c=1",
                f"p50 / p99 (ms), budgets + limits, {mode} (added vs off)",
                f"{fmt(x[f'limits_{mode}_p50_ms'])} / {fmt(x[f'limits_{mode}_p99_ms'])}",
                None, f"{fmt(x[f'added_p50_ms_{mode}'])} / {fmt(x[f'added_p99_ms_{mode}'])}")
            row(f"12 limits PostgreSQL c={x['connections']}", f"req/s, {mode} (off; ratio to off)",
                x[f"limits_{mode}_rps_c64"], x["off_rps_c64"], x[f"rps_ratio_c64_{mode}"])
    if "large_bodies" in s:
        for name, x in s["large_bodies"].items():
            if not isinstance(x, dict):
                continue
            row("5 large bodies", f"{name} p50 (ms)", x["gateway_p50_ms"], x["direct_p50_ms"],
                x["added_p50_ms"])
    if "databases" in s:
        for kind, x in s["databases"].items():
            if isinstance(x, dict):
                row("6 databases", f"{kind}: added p50 / p99 c=1 (ms)", x["added_p50_ms"], None,
                    x["added_p99_ms"])
                row("6 databases", f"{kind}: req/s", x["rps"])
            elif kind == "skipped":
                row("6 databases", "postgres", x)
    if "tail" in s:
        x = s["tail"]
        for kind in ("sqlite", "postgres"):
            for c in x.get("connections") or ():
                prefix = f"{kind}_c{c}"
                if f"{prefix}_p50_ms" in x:
                    row("tail", f"{kind} c={c}: p50 / p99 (ms), p99/p50",
                        x[f"{prefix}_p50_ms"], x[f"{prefix}_p99_ms"],
                        x[f"{prefix}_p99_over_p50"])
                    row("tail", f"{kind} c={c}: req/s, CPU per request (us)",
                        x[f"{prefix}_rps"], None, x[f"{prefix}_cpu_us_per_request"])
        if "skipped" in x:
            row("tail", "postgres", x["skipped"])
    if "celery" in s:
        x = s["celery"]
        for name, figures in (x.get("enqueue") or {}).items():
            if isinstance(figures, dict) and "p50_ms" in figures:
                row("7 celery", f"enqueue: {name.strip()} p50 (ms)", figures["p50_ms"], None,
                    figures.get("per_s"))
        for run in x.get("throughput") or []:
            if isinstance(run, dict) and "jobs_per_s" in run:
                row("7 celery", f"one worker, {run.get('kind')} jobs, prefork "
                    f"{run.get('concurrency')}: calls/s", run["jobs_per_s"])
        for key in ("skipped", "error"):
            if key in x:
                row("7 celery", key, str(x[key])[:200])
    if "admin" in s:
        for key, value in s["admin"].items():
            if not isinstance(value, (dict, list)) and key != "scenario_seconds":
                row("8 admin", key, value)
    if "serving" in s:
        for name, x in s["serving"].items():
            if not isinstance(x, dict):
                continue
            row("serving", f"{name}: req/s, p50 c=1 added (ms)", x.get("rps"), None,
                x.get("added_p50_ms"))
    if "peers" in s:  # bench/peers.py
        from bench import peers as peers_module

        peers_module.table_rows(s["peers"], row, fmt)
    if "sizes" in s:
        sizes_bench.table_rows(s["sizes"], row)
    for name, x in results["scenarios"].items():
        if "error" in x:
            row(name, "FAILED", x["error"][:200])
    lines.append("")
    lines.append("| target | goal | measured | verdict |")
    lines.append("|---|---|---|---|")
    for v in results["targets"]:
        verdict = "not measured" if v["met"] is None else ("met" if v["met"] else
                                                           f"MISSED ({v.get('miss')})")
        lines.append(f"| {v['target']} | {v['goal']} | {fmt(v['measured'])} | {verdict} |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds per scenario (figures mean nothing)")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all): {ALL}, "
                        f"and, only when named, {OPT_IN}")
    parser.add_argument("--peers", action="store_true",
                        help="also run the peers scenario: LiteLLM proxy (installed from PyPI "
                             "into a virtualenv of its own once) beside the gateway, in the "
                             "same run (bench/peers.py)")
    parser.add_argument("--server", default="granian-wsgi", choices=sorted(SERVER_COMMANDS),
                        help="the gateway of scenarios 1-8 (and the WSGI side of 9 if WSGI)")
    parser.add_argument("--asgi-server", default="uvicorn", choices=ASGI_SERVERS,
                        help="the ASGI gateway of scenarios 9 (asgi_*) and 10 (soak)")
    parser.add_argument("--uvicorn-stack", choices=("auto", "plain"), default=None,
                        help="uvicorn's loop and HTTP parser: auto (uvloop and httptools "
                             "when installed) or plain (asyncio and h11)")
    parser.add_argument("--asgi-django", action="store_true",
                        help="scenarios 9 also load a third gateway: the ASGI server with "
                             "Django's handler serving /v1/ (OPENAI_DJANGO_ASGI_LEAN=0)")
    parser.add_argument("--asgi-plain", action="store_true",
                        help="scenarios 9 also load the lean ASGI gateway under uvicorn with "
                             "asyncio and h11 (asgi_plain), beside uvloop and httptools")
    parser.add_argument("--soak-streams", type=int, default=10_000)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--soak-interval-ms", type=float, default=500.0)
    parser.add_argument("--soak-ramp", type=float, default=None,
                        help="seconds over which the soak's streams open (default min(20, "
                             "seconds / 3))")
    parser.add_argument("--soak-http", choices=("2", "1.1"), default="2",
                        help="the soak gateway's protocol to the upstream (2: h2c, many "
                             "streams a connection)")
    parser.add_argument("--soak-generators", type=int, default=2,
                        help="load generator processes of the soak")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: what docs/performance.md chose)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--max-streams", type=int, default=None,
                        help="largest N tried in the slow-streams scenario")
    parser.add_argument("--admin-calls", type=int, default=1_000_000)
    parser.add_argument("--sizes-tables", help="comma-separated call counts already in the "
                        "table for the sizes scenario (default 10000,1000000,10000000)")
    parser.add_argument("--sizes-parts", default="bodies,tables",
                        help="the halves of the sizes scenario to run: bodies, tables or both")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


# 512 threads a worker: 2 x 512 streams held at once (scenario 4); idle threads cost nothing
# (granian starts them on demand) and measured no worse than 8 at saturation (docs).
DEFAULT_THREADS = {"granian-wsgi": 512, "gunicorn-gthread": 512, "granian-asgi": 1,
                   "uvicorn": 1}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wanted = args.only.split(",") if args.only else (QUICK if args.quick else ALL)
    if args.peers and "peers" not in wanted:
        wanted = [*wanted, "peers"]
    unknown = set(wanted) - set(ALL) - set(OPT_IN)
    if unknown:
        sys.exit(f"unknown scenarios: {sorted(unknown)}")
    params = scenarios.Params.quick() if args.quick else scenarios.Params()
    if args.max_streams:
        params.slow_stream_counts = tuple(n for n in params.slow_stream_counts
                                          if n <= args.max_streams) or (args.max_streams,)
    threads = args.threads or DEFAULT_THREADS[args.server]
    if args.uvicorn_stack:
        harness_module.UVICORN_STACK = args.uvicorn_stack
    # The soak's gateway needs 2 sockets a stream (client and upstream), plus its own.
    fd_limit = raise_fd_limit(max(65536, 2 * args.soak_streams + 4096))
    somaxconn = raise_somaxconn(4096)
    started = time.time()
    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "quick": args.quick, "machine": machine(), "loadavg_before": loadavg(),
            "gateway": {"server": args.server, "workers": args.workers, "threads": threads},
            "asgi_gateway": {"server": args.asgi_server, "workers": args.workers,
                             "lean": True, "django_handler_too": args.asgi_django,
                             "plain_uvicorn_too": args.asgi_plain},
            "fd_limit": fd_limit, "somaxconn": somaxconn, "ephemeral_ports": port_range(),
            "uvicorn": dict(zip(("loop", "http"), harness_module.uvicorn_stack())),
        },
        "scenarios": {},
    }
    with Harness(keep=args.keep) as harness:
        harness.start_upstream()
        sqlite = harness.sqlite()
        gateway = harness.start_gateway(sqlite, server=args.server, workers=args.workers,
                                        threads=threads, name="gateway")
        ctx = scenarios.Context(harness, gateway, params)
        scenarios.check_contract(ctx)
        done = results["scenarios"]

        def run(name, fn):
            if name not in wanted:
                return
            t0 = time.perf_counter()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                done[name] = fn()
            except Exception as exc:
                log.exception("scenario %s failed", name)
                done[name] = {"error": f"{type(exc).__name__}: {exc}"}
            done.setdefault(name, {})
            if isinstance(done[name], dict):
                done[name]["scenario_seconds"] = round(time.perf_counter() - t0, 1)

        run("latency", lambda: scenarios.latency(ctx))
        run("sdk_latency", lambda: sdk_latency.sdk_latency(ctx))
        run("responses", lambda: scenarios.latency(ctx, name="responses", path="/responses",
                                                   body=scenarios.RESPONSE))
        run("speech", lambda: operations_bench.speech(ctx))

        def tput():
            off = harness.start_gateway(sqlite, server=args.server, workers=args.workers,
                                        threads=threads, record=False, name="gateway-norec")
            try:
                scenarios.check_contract(ctx, off)
                return scenarios.throughput(ctx, unrecorded=off)
            finally:
                harness.stop_gateway(off)

        run("throughput", tput)
        run("streaming", lambda: scenarios.streaming(ctx))
        run("responses_stream", lambda: operations_bench.responses_stream(ctx))
        run("slow_streams", lambda: scenarios.slow_streams(ctx))
        run("large_bodies", lambda: scenarios.large_bodies(ctx))

        def dbs():
            pg = harness.postgres()
            if pg is None:
                return {"skipped": "no PostgreSQL (scripts/services start pg, or BENCH_PG_URL)"}
            pg_gateway = harness.start_gateway(pg, server=args.server, workers=args.workers,
                                               threads=threads, name="gateway-pg")
            try:
                scenarios.check_contract(ctx, pg_gateway)
                return scenarios.databases(ctx, {"sqlite": gateway, "postgres": pg_gateway})
            finally:
                harness.stop_gateway(pg_gateway)

        # 9. ASGI beside WSGI: a second gateway under the ASGI server, same database and
        # stand-in, loaded in alternation with the WSGI one (and direct) round by round.
        pair = {}

        def gateways():
            if not pair:
                if args.server in ASGI_SERVERS:
                    pair["wsgi"] = harness.start_gateway(
                        sqlite, server="granian-wsgi", workers=args.workers,
                        threads=DEFAULT_THREADS["granian-wsgi"], name="gateway-wsgi")
                    scenarios.check_contract(ctx, pair["wsgi"])
                else:
                    pair["wsgi"] = gateway
                pair["asgi"] = harness.start_gateway(sqlite, server=args.asgi_server,
                                                     workers=args.workers, threads=1,
                                                     name="gateway-asgi")
                scenarios.check_contract(ctx, pair["asgi"])
                if args.asgi_django:
                    pair["asgi_django"] = harness.start_gateway(
                        sqlite, server=args.asgi_server, workers=args.workers, threads=1,
                        name="gateway-asgi-django", env={"OPENAI_DJANGO_ASGI_LEAN": "0"})
                    scenarios.check_contract(ctx, pair["asgi_django"])
                if args.asgi_plain and args.asgi_server == "uvicorn":
                    pair["asgi_plain"] = harness.start_gateway(
                        sqlite, server="uvicorn", workers=args.workers, threads=1,
                        name="gateway-asgi-plain", stack="plain")
                    scenarios.check_contract(ctx, pair["asgi_plain"])
            return pair

        def asgi_latency():
            done["asgi_responses"] = scenarios.compare_latency(
                ctx, gateways(), name="responses", path="/responses", body=scenarios.RESPONSE)
            return scenarios.compare_latency(ctx, gateways())

        run("asgi_latency", asgi_latency)
        run("asgi_throughput", lambda: scenarios.compare_throughput(ctx, gateways()))
        run("asgi_streaming", lambda: scenarios.compare_streaming(ctx, gateways()))
        for started_gateway in pair.values():
            if started_gateway is not gateway:
                harness.stop_gateway(started_gateway)

        def limits_():  # budgets and rate limits on the hot path (bench/limits_bench.py)
            from bench import limits_bench

            figures = limits_bench.limits(ctx, sqlite, os.environ.get("REDIS_URL"),
                                          server=args.server, workers=args.workers,
                                          threads=threads)
            pg = harness.postgres() if os.environ.get("BENCH_LIMITS_PG", "1") != "0" else None
            if pg is not None:  # the same on PostgreSQL, its own gateways
                pg_gateway = harness.start_gateway(pg, server=args.server,
                                                   workers=args.workers, threads=threads,
                                                   name="gateway-limits-pg")
                try:
                    scenarios.check_contract(ctx, pg_gateway)
                    # Four gateways at once on one server: c=32 keeps their kept connections
                    # (one per busy thread) under PostgreSQL's max_connections (c=64: errors).
                    pg_params = dataclasses.replace(params, throughput_connections=min(
                        32, params.throughput_connections))
                    pg_ctx = scenarios.Context(harness, pg_gateway, pg_params)
                    figures["postgres"] = limits_bench.limits(
                        pg_ctx, pg, os.environ.get("REDIS_URL"), server=args.server,
                        workers=args.workers, threads=threads)
                finally:
                    harness.stop_gateway(pg_gateway)
            return figures

        run("limits", limits_)
        run("databases", dbs)

        def tails():
            gateways = {"sqlite": gateway}
            pg = harness.postgres()
            pg_gateway = None
            if pg is not None:
                pg_gateway = harness.start_gateway(pg, server=args.server, workers=args.workers,
                                                   threads=threads, name="gateway-pg-tail")
                scenarios.check_contract(ctx, pg_gateway)
                gateways["postgres"] = pg_gateway
            try:
                out = scenarios.tail(ctx, gateways)
            finally:
                if pg_gateway is not None:
                    harness.stop_gateway(pg_gateway)
            if pg is None:
                out["skipped"] = "no PostgreSQL (scripts/services start pg, or BENCH_PG_URL)"
            return out

        run("tail", tails)
        run("celery", lambda: scenarios.external(ctx, "celery_bench", sqlite,
                                                 ["--quick"] if args.quick else []))
        # Routing among ten upstreams and a fallback, in-process (bench/upstreams_bench.py).
        run("upstreams", lambda: scenarios.external(ctx, "upstreams_bench", sqlite,
                                                    ["--quick"] if args.quick else []))

        def admin():
            seeded = scenarios.external(ctx, "seed", sqlite, ["--calls", str(args.admin_calls)])
            if "skipped" in seeded or "error" in seeded:
                return seeded
            return scenarios.external(ctx, "admin_bench", sqlite)

        run("admin", admin)

        def serving():
            out = {}
            # Each server alone on the box: the suite's gateway is stopped for the comparison
            # and started again after it, since the scenarios that follow (sizes, peers)
            # measure it. (Not started again, they found nothing listening: both full runs
            # of 2026-12-03 and 2026-12-04 lost them.)
            harness.stop_gateway(ctx.gateway)
            try:
                for server, workers, threads_ in (("granian-wsgi", 2, threads),
                                                  ("gunicorn-gthread", 2, threads),
                                                  ("granian-asgi", 2, 1)):
                    name = f"{server} {workers}x{threads_}"
                    g = harness.start_gateway(sqlite, server=server, workers=workers,
                                              threads=threads_, name=server)
                    try:
                        scenarios.check_contract(ctx, g)
                        lat = scenarios.latency(ctx, g, name=server)
                        tp = scenarios.throughput(scenarios.Context(harness, g, params))
                        out[name] = {"rps": tp["recorded_rps"],
                                     "added_p50_ms": lat["added_p50_ms"],
                                     "added_p99_ms": lat["added_p99_ms"],
                                     "errors": tp["recorded_errors"] + lat["errors"]}
                    finally:
                        harness.stop_gateway(g)
            finally:
                ctx.gateway = harness.start_gateway(sqlite, server=args.server,
                                                    workers=args.workers, threads=threads,
                                                    name="gateway-after-serving")
                scenarios.check_contract(ctx)
            return out

        run("serving", serving)

        def soak():
            # 10. One ASGI worker process holding N long streams, on a database of its own
            # (the records are counted there at the end).
            db = harness.sqlite("soak")
            one = harness.start_gateway(db, server=args.asgi_server, workers=1, threads=1,
                                        name="gateway-soak", env={
                                            "OPENAI_DJANGO_HTTP2":
                                                "1" if args.soak_http == "2" else "0"})
            try:
                scenarios.check_contract(ctx, one)
                return scenarios.soak(ctx, one, db, scenarios.SoakParams(
                    streams=args.soak_streams, seconds=args.soak_seconds,
                    interval_ms=args.soak_interval_ms, ramp=args.soak_ramp,
                    shares=args.soak_generators, http=args.soak_http))
            finally:
                harness.stop_gateway(one)

        run("soak", soak)

        def soak_floor():
            # 10b. The soak's floor on this machine, with the soak's parameters: a bare ASGI
            # app sending timer events, and a bare relay from the stand-in (bench/soak_floor).
            from bench import soak_floor as floors

            ramp = scenarios.SoakParams(seconds=args.soak_seconds,
                                        ramp=args.soak_ramp).ramp_seconds()
            common = dict(streams=args.soak_streams, seconds=args.soak_seconds,
                          interval_ms=args.soak_interval_ms, ramp=ramp,
                          shares=args.soak_generators)
            return {"timer events": floors.floor(**common),
                    "bare relay": floors.floor(**common, relay=True,
                                               relay_http=args.soak_http)}

        run("soak_floor", soak_floor)
        # 13. Cost as work grows: body sizes and table sizes (bench/sizes_bench.py).
        run("sizes", lambda: sizes_bench.sizes(
            ctx, quick=args.quick, server=args.server, workers=args.workers, threads=threads,
            tables=[int(n) for n in args.sizes_tables.split(",")] if args.sizes_tables
            else None, parts=args.sizes_parts.split(",")))

        def peers_():  # 13. LiteLLM proxy beside the gateway (bench/peers.py)
            from bench import peers as peers_module

            return peers_module.peers(ctx, install=args.peers, server=args.server,
                                      workers=args.workers, threads=threads)

        run("peers", peers_)

    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["seconds"] = round(time.time() - started, 1)
    results["targets"] = verdicts(results["scenarios"])
    text = table(results)
    results["table"] = text
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(text)
    print(f"\nwritten to {out}; load average before {results['meta']['loadavg_before']}, "
          f"after {results['meta']['loadavg_after']}")
    return results


if __name__ == "__main__":
    main()
