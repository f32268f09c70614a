"""Peers: the LiteLLM proxy beside the gateway, in the same run, against the same stand-in.

``python -m bench --peers`` (or ``--only peers`` to reuse an installed copy without
installing) installs the LiteLLM proxy from PyPI into a virtualenv of its own, outside the
project's (``~/.cache/openai-django-bench/litellm-<version>``, or under ``BENCH_PEERS_DIR``;
reused while it holds the same pinned version), starts it with the production settings its
documentation recommends (see :data:`LITELLM_CONFIG` and ``docs/performance.md``, "Peers"),
pointed at the stand-in upstream the gateway uses, and loads, round by round at each
concurrency: the gateway (recording on, SQLite), the gateway on PostgreSQL when one is
available, LiteLLM without a database, LiteLLM with its database spend logging on PostgreSQL,
and the stand-in directly. Figures: req/s, p50, p99 at c=1, 32 and 64 (wrk and the bench's
Lua script), CPU time of each server's process tree per request, peak RSS of each tree, and
the time to first event of a stream.

Whatever cannot run here (no virtualenv, no PostgreSQL, Prisma's engines) is not guessed: the
side is left out and its reason is written in the figures (``not_measurable``) and the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.harness import UPSTREAM_KEY, Server, free_port
from bench.loadgen import WrkScript
from bench.scenarios import CHAT, _median, _pct, _saturate, _sequential_streams, check_contract

log = logging.getLogger("bench.peers")

#: The newest LiteLLM whose ``[proxy]`` extra resolves from PyPI as this machine sees it
#: (1.108.10 and later pin ``litellm-enterprise`` / ``litellm-proxy-extras`` post-releases
#: and 1.110 a ``litellm-proxy`` that the index does not have; 1.107.0 was a compromised
#: release). ``BENCH_LITELLM_VERSION`` picks another.
LITELLM_VERSION = os.environ.get("BENCH_LITELLM_VERSION", "1.108.7")
#: LiteLLM's database layer is Prisma (prisma-client-py, the ``extra_proxy`` extra); only
#: that package is added, not the whole extra (cloud KMS clients and the like).
PRISMA_REQUIREMENT = "prisma==0.15.0"
MASTER_KEY = "sk-litellm-bench-" + "m" * 32
CONCURRENCIES = (1, 32, 64)
#: Workers of the LiteLLM proxy: the gateway's count (``--workers``, 2 on this 2-core box).
#: LiteLLM's docs size one instance at 2 vCPU and start more workers with ``--num_workers``.
LITELLM_ENV = {
    "LITELLM_MODE": "PRODUCTION",  # docs: no load_dotenv() in production
    "LITELLM_LOG": "ERROR",  # docs: "Turn off FASTAPI's default info logs"
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the price map from the package, not fetched
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
}


class PeerUnavailable(Exception):
    """A peer that cannot run here; ``str()`` is the reason the table shows."""


def peers_dir():
    return Path(os.environ.get("BENCH_PEERS_DIR")
                or Path.home() / ".cache" / "openai-django-bench")


def venv_path(version=LITELLM_VERSION):
    return peers_dir() / f"litellm-{version}"


def _tail(text, lines=6):
    kept = [line for line in (text or "").splitlines()
            if line.strip() and not line.startswith("WARNING: Location")]
    return " | ".join(kept[-lines:])[-1500:]


def ensure_litellm(version=LITELLM_VERSION, *, install=True, timeout=1800):
    """The virtualenv holding LiteLLM ``version`` (and Prisma's Python client): reused when
    its marker names the same version, else made and filled from PyPI when ``install``.
    Raises :class:`PeerUnavailable` with the reason when it cannot be had."""
    venv = venv_path(version)
    marker = venv / "bench-peers.json"
    wanted = {"litellm": version, "requirements": [f"litellm[proxy]=={version}",
                                                    PRISMA_REQUIREMENT]}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == wanted and (venv / "bin" / "litellm").exists():
            return venv
    if not install:
        raise PeerUnavailable(f"LiteLLM {version} is not installed at {venv} (python -m "
                              f"bench --peers installs it from PyPI)")
    python = os.environ.get("BENCH_PEERS_PYTHON") or getattr(sys, "_base_executable",
                                                              sys.executable)
    log.warning("installing LiteLLM %s into %s (once)", version, venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        made = subprocess.run([python, "-m", "venv", "--clear", str(venv)],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"no virtualenv for LiteLLM: {python} -m venv: {exc}") from exc
    if made.returncode != 0:
        raise PeerUnavailable(f"no virtualenv for LiteLLM: {python} -m venv exited "
                              f"{made.returncode}: {_tail(made.stderr + made.stdout)}")
    try:
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check",
                              *wanted["requirements"]], capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"pip install of LiteLLM {version} failed: {exc}") from exc
    if pip.returncode != 0:
        raise PeerUnavailable(f"pip install {' '.join(wanted['requirements'])} exited "
                              f"{pip.returncode}: {_tail(pip.stderr + pip.stdout)}")
    marker.write_text(json.dumps(wanted))
    return venv


def prisma_ready(venv, timeout=300):
    """``prisma --version`` in LiteLLM's virtualenv: the bootstrap LiteLLM runs first when a
    database URL is set (litellm_proxy_extras.prisma_toolchain): it npm-installs Prisma's CLI
    and fetches the query and schema engines. ``(True, version text)`` or ``(False, the
    error)``."""
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    try:
        out = subprocess.run([str(venv / "bin" / "prisma"), "--version"], capture_output=True,
                             text=True, timeout=timeout, env=env, cwd=str(venv))
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"prisma --version: {exc}"
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        errors = [line for line in text.splitlines() if "rror" in line] or text.splitlines()
        return False, f"prisma --version exited {out.returncode}: {' | '.join(errors[-3:])}"
    return True, _tail(text, 20)


def litellm_config(upstream_url, *, database):
    """LiteLLM's config.yaml, its documented production settings ("Best Practices for
    Production"): a master key, ``set_verbose: False`` and no debug flags, spend updates
    batched every 60 s, a pool of 10 connections a worker; one OpenAI-compatible model entry
    on the stand-in (``api_base`` = its URL + /v1, a fake key). Without a database there is no
    spend log to write; with one, spend logs stay on (the point of that side) and only error
    logs are off, as the docs advise."""
    lines = [
        "model_list:",
        f"  - model_name: {CHAT['model']}",
        "    litellm_params:",
        f"      model: openai/{CHAT['model']}",
        f"      api_base: {upstream_url}",
        f"      api_key: {UPSTREAM_KEY}",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
        "  proxy_batch_write_at: 60",
        "  database_connection_pool_limit: 10",
        "  disable_error_logs: true",
        f"  disable_spend_logs: {'false' if database else 'true'}",
        "litellm_settings:",
        "  request_timeout: 600",
        "  set_verbose: false",
        "  json_logs: true",
        "",
    ]
    return "\n".join(lines)


#: uvicorn's supervisor kills a worker that does not answer its ping within
#: ``timeout_worker_healthcheck`` (5 s by default) and starts another: a worker importing
#: LiteLLM on a loaded 2-core machine takes longer than that, so with the default the workers
#: were replaced forever and the proxy never served (seen here at load average 8-14).
#: LiteLLM's CLI has the flag for it; 120 s.
WORKER_HEALTHCHECK_S = 120


def litellm_command(venv, config_path, port, workers):
    # The documented CLI: uvicorn (LiteLLM's default server), --num_workers for more than one.
    return [str(venv / "bin" / "litellm"), "--config", str(config_path), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", str(workers), "--telemetry", "False",
            "--timeout_worker_healthcheck", str(WORKER_HEALTHCHECK_S)]


def start_litellm(harness, venv, *, name, workers, database_url=None, timeout=240):
    config = Path(harness.workdir) / f"{name}.yaml"
    config.write_text(litellm_config(harness.upstream.url, database=bool(database_url)))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "OPENAI_", "DATABASE_", "LITELLM_"))}
    env.update(LITELLM_ENV)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"  # its log as it goes (the reason, if it does not start)
    env["LITELLM_MIGRATION_DIR"] = str(Path(harness.workdir) / f"{name}-migrations")
    if database_url:
        env["DATABASE_URL"] = database_url
        env["LITELLM_SALT_KEY"] = "sk-litellm-bench-salt-" + "s" * 24
    server = Server(name=name, cmd=litellm_command(venv, config, port, workers), env=env,
                    port=port)
    server.extra = {"server": "litellm (uvicorn)", "workers": workers,
                    "database": bool(database_url)}
    # Server.start waits for any answer under 500 (LiteLLM answers 404 to the gateway's
    # /v1/openapi.yaml once uvicorn serves, i.e. after the app's startup).
    try:
        server.start(harness.workdir, timeout=timeout)
    except Exception as exc:
        raise PeerUnavailable(f"{name} did not start: {exc}; its log ends: "
                              f"{_tail(server.log_tail(), 8)}") from exc
    harness.servers.append(server)
    return server


def _litellm_db_url(pg_url):
    """A database of LiteLLM's own on the cluster the gateway's PostgreSQL lives on."""
    import psycopg

    name = f"bench_{os.getpid()}_litellm"
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url.rsplit("/", 1)[0] + "/" + name, name


def _drop_db(pg_url, name):
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _spend_rows(db_url):
    import psycopg

    try:
        with psycopg.connect(db_url, connect_timeout=5) as conn:
            return conn.execute('SELECT count(*) FROM "LiteLLM_SpendLogs"').fetchone()[0]
    except Exception as exc:  # a figure, not a failure
        return f"{type(exc).__name__}: {exc}"[:200]


class _RssPeak:
    """Samples each server's process-tree RSS every 0.5 s while the load runs."""

    def __init__(self, servers):
        self.servers = servers
        self.peak = {label: s.rss_kb() for label, s in servers.items()}
        self.idle = dict(self.peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            for label, server in self.servers.items():
                with contextlib.suppress(Exception):
                    self.peak[label] = max(self.peak[label], server.rss_kb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _ttfe(harness, servers, headers, rounds, count):
    """Time to first event of 2-event streams, sequential on one kept connection, each side
    in turn round by round (as scenario 3)."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    harness.configure_upstream(events=2, gap_ms=0, ttft_ms=0)
    urls = {label: url for label, url in servers.items()}
    for label, url in urls.items():
        asyncio.run(_sequential_streams(url, headers[label], body, 3))
    values = {label: [] for label in urls}
    errors = {label: 0 for label in urls}
    for _ in range(rounds):
        for label, url in urls.items():
            results = asyncio.run(_sequential_streams(url, headers[label], body, count))
            errors[label] += sum(not r.ok for r in results)
            values[label].extend(r.ttfe_ms for r in results if r.ok)
    harness.configure_upstream(events=8, gap_ms=0, ttft_ms=0)
    return {label: {"ttfe_p50_ms": _pct(v, 50), "ttfe_p99_ms": _pct(v, 99),
                    "stream_errors": errors[label]} for label, v in values.items()}


# Columns compared, and which way is better.
COLUMNS = [(f"c{c}_{what}", better) for c in CONCURRENCIES
           for what, better in (("rps", "higher"), ("p50_ms", "lower"), ("p99_ms", "lower"))]
COLUMNS += [("cpu_us_per_request", "lower"), ("rss_peak_mb", "lower")]


def behind(gateway, peer):
    """The columns on which ``gateway`` is not ahead of ``peer`` (both figure dicts)."""
    out = []
    for key, better in COLUMNS:
        g, p = gateway.get(key), peer.get(key)
        if g is None or p is None:
            continue
        if (g <= p) if better == "higher" else (g >= p):
            out.append(key)
    return out


def peers(ctx, *, install, server="granian-wsgi", workers=2, threads=8, postgres=None):
    """The peer scenario; ``ctx.gateway`` is the harness's gateway (recording on, SQLite).
    ``postgres``: load the PostgreSQL sides (default: unless ``BENCH_PEERS_PG=0``)."""
    harness, p = ctx.harness, ctx.params
    # LiteLLM's workers: the gateway's by default; BENCH_LITELLM_WORKERS=1 is its docs'
    # "one Uvicorn worker per pod".
    litellm_workers = int(os.environ.get("BENCH_LITELLM_WORKERS") or workers)
    if postgres is None:
        postgres = os.environ.get("BENCH_PEERS_PG", "1") != "0"
    out = {"litellm_version": LITELLM_VERSION, "litellm_workers": litellm_workers,
           "gateway_workers": workers,
           "litellm_command": "litellm --config CONFIG --host 127.0.0.1 --port PORT "
                              f"--num_workers {litellm_workers} --telemetry False "
                              f"--timeout_worker_healthcheck {WORKER_HEALTHCHECK_S}",
           "litellm_env": LITELLM_ENV, "concurrencies": list(CONCURRENCIES),
           "seconds_a_point": p.throughput_seconds, "rounds": p.throughput_rounds,
           "c1_seconds_a_point": p.latency_seconds, "c1_rounds": p.rounds,
           "not_measurable": {}, "sides": {}}
    started = []
    db_cleanup = []
    servers = {"gateway": ctx.gateway}
    headers = {"gateway": ctx.gw_headers()}
    litellm_headers = {"Content-Type": "application/json",
                       "Authorization": f"Bearer {MASTER_KEY}"}
    try:
        pg = harness.postgres() if postgres else None
        if pg is None:
            out["not_measurable"]["gateway_pg"] = out["not_measurable"]["litellm_db"] = (
                "no PostgreSQL (scripts/services start pg, or BENCH_PG_URL)" if postgres
                else "PostgreSQL sides off (BENCH_PEERS_PG=0)")
        else:
            gw_pg = harness.start_gateway(pg, server=server, workers=workers, threads=threads,
                                          name="gateway-peers-pg")
            started.append(gw_pg)
            check_contract(ctx, gw_pg)
            servers["gateway_pg"], headers["gateway_pg"] = gw_pg, ctx.gw_headers()
        venv = None
        try:
            venv = ensure_litellm(install=install)
        except PeerUnavailable as exc:
            out["not_measurable"]["litellm"] = str(exc)
            out["not_measurable"].setdefault("litellm_db", str(exc))
        if venv is not None:
            try:
                litellm = start_litellm(harness, venv, name="litellm",
                                        workers=litellm_workers)
                started.append(litellm)
                _check_litellm(litellm)
                servers["litellm"], headers["litellm"] = litellm, litellm_headers
            except PeerUnavailable as exc:
                out["not_measurable"]["litellm"] = str(exc)
        if venv is not None and pg is not None:
            ok, detail = prisma_ready(venv)
            out["prisma"] = detail
            if not ok:
                out["not_measurable"]["litellm_db"] = (
                    "LiteLLM's database layer is Prisma, whose CLI downloads its native "
                    "query and schema engines from Prisma's own host at first use (the "
                    "prisma and @prisma/engines npm packages do not ship them): "
                    f"{detail}")
            else:
                db_url, db_name = _litellm_db_url(pg.url)
                db_cleanup.append((pg.url, db_name))
                try:
                    litellm_db = start_litellm(harness, venv, name="litellm-db",
                                               workers=litellm_workers, database_url=db_url,
                                               timeout=900)
                    started.append(litellm_db)
                    _check_litellm(litellm_db)
                    servers["litellm_db"] = litellm_db
                    headers["litellm_db"] = litellm_headers
                    out["litellm_db_url_database"] = db_name
                except Exception as exc:  # recorded as the reason
                    out["not_measurable"]["litellm_db"] = (
                        f"LiteLLM with DATABASE_URL did not start: {exc}")
        out["sides"] = {label: dict(s.extra) for label, s in servers.items()}
        _measure(ctx, servers, headers, out)
        if "litellm_db" in servers:
            out["litellm_db_spend_rows"] = _spend_rows(servers["litellm_db"].env["DATABASE_URL"])
    finally:
        for s in reversed(started):
            harness.stop_gateway(s)
        for pg_url, name in db_cleanup:
            _drop_db(pg_url, name)
    return out


def _check_litellm(server):
    """One chat through LiteLLM before measuring: 200 and a chat completion."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {MASTER_KEY}"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200 or b"chat.completion" not in data:
        raise PeerUnavailable(f"{server.name} answered {response.status}: {data[:300]!r}; "
                           f"log:\n{server.log_tail()}")


def _measure(ctx, servers, headers, out):
    harness, p = ctx.harness, ctx.params
    body = json.dumps(CHAT).encode()
    scripts = {label: WrkScript(ctx.workdir, f"peers-{label}", body=body,
                                headers=headers[label]) for label in servers}
    direct_script = WrkScript(ctx.workdir, "peers-direct", body=body,
                              headers=ctx.direct_headers())
    targets = [(label, s.url + "/v1/chat/completions", scripts[label], s)
               for label, s in servers.items()]
    targets.append(("direct", ctx.upstream.url + "/chat/completions", direct_script, None))
    sides = {label: {} for label, *_ in targets}
    with _RssPeak(servers) as rss:
        for c in CONCURRENCIES:
            if c == 1:
                params = dataclasses.replace(p, throughput_connections=1,
                                             throughput_seconds=p.latency_seconds,
                                             throughput_rounds=p.rounds)
            else:
                params = dataclasses.replace(p, throughput_connections=c)
            results, figures = _saturate(params, targets)
            for label in sides:
                for what in ("rps", "p50_ms", "p99_ms", "errors"):
                    sides[label][f"c{c}_{what}"] = figures.get(f"{label}_{what}")
                # A round without one answer has no latency (wrk prints 0): the percentiles
                # are the medians over the rounds that had answers, None if none had.
                answered = [r for r in results[label] if r.requests]
                sides[label][f"c{c}_requests"] = sum(r.requests for r in results[label])
                sides[label][f"c{c}_p50_ms"] = _median([r.p50_ms for r in answered])
                sides[label][f"c{c}_p99_ms"] = _median([r.p99_ms for r in answered])
                if f"{label}_cpu_us_per_request" in figures:
                    sides[label][f"c{c}_cpu_us_per_request"] = figures[
                        f"{label}_cpu_us_per_request"]
    for label in servers:
        # CPU per request at saturation (c=32 and c=64), where the cost is not idle time.
        sat = [sides[label].get(f"c{c}_cpu_us_per_request") for c in CONCURRENCIES if c > 1]
        sides[label]["cpu_us_per_request"] = _median(sat)
        sides[label]["rss_idle_mb"] = round(rss.idle[label] / 1024, 1)
        sides[label]["rss_peak_mb"] = round(rss.peak[label] / 1024, 1)
    stream_urls = {label: s.url + "/v1/chat/completions" for label, s in servers.items()}
    stream_urls["direct"] = ctx.upstream.url + "/chat/completions"
    stream_headers = {label: {"Authorization": h["Authorization"]} for label, h in
                      headers.items()}
    stream_headers["direct"] = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    try:
        for label, figures in _ttfe(harness, stream_urls, stream_headers, p.rounds,
                                    max(5, p.ttfe_streams // 2)).items():
            sides[label].update(figures)
    except Exception as exc:  # an optional figure
        out["ttfe_error"] = f"{type(exc).__name__}: {exc}"
    out.update(sides)
    for peer in ("litellm", "litellm_db"):
        if peer in sides:
            cols = behind(sides["gateway"], sides[peer])
            out[f"{peer}_columns_behind"] = cols
            out[f"{peer}_columns_behind_count"] = len(cols)
            out[f"{peer}_columns_compared"] = sum(
                1 for key, _ in COLUMNS
                if sides["gateway"].get(key) is not None and sides[peer].get(key) is not None)
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["loadavg"] = _loadavg()
    return out


def _loadavg():
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return None


LABELS = {"gateway": "openai-django, SQLite (recording on)",
          "gateway_pg": "openai-django, PostgreSQL (recording on)",
          "litellm": "LiteLLM proxy, no database",
          "litellm_db": "LiteLLM proxy, spend logs on PostgreSQL",
          "direct": "stand-in upstream, direct"}


def table_rows(x, row, fmt):
    """The peers' rows of bench/runner.py's table: ``row(scenario, figure, gateway, direct,
    added)``; a side that could not run says why."""
    title = f"13 peers (LiteLLM {x.get('litellm_version')})"
    for label, name in LABELS.items():
        side = x.get(label)
        if not isinstance(side, dict):
            reason = (x.get("not_measurable") or {}).get(label)
            if reason:
                row(title, name, f"not measurable here: {reason}")
            continue
        for c in CONCURRENCIES:
            row(title, f"{name}: c={c} req/s, p50 / p99 (ms)", side.get(f"c{c}_rps"),
                f"{fmt(side.get(f'c{c}_p50_ms'))} / {fmt(side.get(f'c{c}_p99_ms'))}",
                f"errors {fmt(side.get(f'c{c}_errors'))}")
        if label != "direct":
            row(title, f"{name}: CPU per request (us), peak RSS (MB)",
                side.get("cpu_us_per_request"), side.get("rss_peak_mb"),
                f"idle RSS {fmt(side.get('rss_idle_mb'))} MB")
        if side.get("ttfe_p50_ms") is not None:
            row(title, f"{name}: stream time to first event p50 / p99 (ms)",
                side.get("ttfe_p50_ms"), side.get("ttfe_p99_ms"),
                f"stream errors {fmt(side.get('stream_errors'))}")
    for peer in ("litellm", "litellm_db"):
        if f"{peer}_columns_behind" in x:
            cols = x[f"{peer}_columns_behind"]
            row(title, f"columns where the gateway is not ahead of {LABELS[peer]}",
                ", ".join(cols) or "none", None,
                f"{len(cols)} of {x.get(f'{peer}_columns_compared')}")
    if "litellm_db_spend_rows" in x:
        row(title, "LiteLLM spend-log rows written by the end", x["litellm_db_spend_rows"])

