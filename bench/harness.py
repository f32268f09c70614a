"""The processes a benchmark runs against: a database, the stand-in upstream, gateway servers.

Everything listens on 127.0.0.1 on ports picked here (never 5432, 6379 or 4010), lives under one
temporary folder, and is stopped by the process id (or process group) this module started, so a
benchmark never touches another engineer's servers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from openai_django.testing import StandinServer

log = logging.getLogger("bench.harness")

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UPSTREAM_KEY = "sk-bench-upstream"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def raise_fd_limit(target=65536):
    """Thousands of concurrent streams need thousands of sockets, in this process and in the
    servers it starts (they inherit the limit): the soft limit is raised to ``target``, and
    the hard one with it where the process may (root with ``CAP_SYS_RESOURCE``, up to
    /proc/sys/fs/nr_open); a container without that capability keeps its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < target:
        with contextlib.suppress(ValueError, OSError):
            with open("/proc/sys/fs/nr_open") as fh:
                target = min(target, int(fh.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(target, hard) if hard != resource.RLIM_INFINITY else target
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_somaxconn(backlog=4096):
    """The kernel caps every listen backlog at net.core.somaxconn (per network namespace):
    raised to ``backlog`` where writable (root), so a ramp of thousands of connections a
    second is not dropped at the listener. Returns the value in force (None if unreadable)."""
    path = "/proc/sys/net/core/somaxconn"
    try:
        with open(path) as fh:
            current = int(fh.read())
        if current < backlog:
            with open(path, "w") as fh:
                fh.write(str(backlog))
            current = backlog
        return current
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError), open(path) as fh:
            return int(fh.read())
        return None


def port_range():
    """The loopback's ephemeral ports (each (address, port) a client connects to has this
    many), from /proc/sys/net/ipv4/ip_local_port_range."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        lo, hi = (int(x) for x in fh.read().split())
        return hi - lo + 1
    return None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with _NO_PROXY.open(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


def _tree_sum(pid, measure):
    """Sum ``measure(entry, stat_fields)`` over a process and its live descendants (/proc)."""
    children, values = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            values[int(entry)] = measure(entry, fields)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += values.get(current, 0)
        todo.extend(children.get(current, ()))
    return total


def _rss_kb(entry, fields):
    with open(f"/proc/{entry}/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def tree_rss_kb(pid):
    """Resident memory of a process and all its descendants, in KiB (from /proc)."""
    return _tree_sum(pid, _rss_kb)


def _fd_count(entry, fields):
    try:
        return len(os.listdir(f"/proc/{entry}/fd"))
    except OSError:
        return 0


def tree_fds(pid):
    """Open file descriptors of a process and its live descendants (sockets included)."""
    return _tree_sum(pid, _fd_count)


def fd_limits(pid):
    """``(soft, hard)`` open-file limit of a running process, from /proc/PID/limits."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/limits") as fh:
            for line in fh:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
    return None, None


def has_module(name):
    """Whether ``name`` imports in the interpreter the servers run under (this one)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def tcp_listener(backlog=4096):
    """A listening TCP socket on 127.0.0.1 with TCP_NODELAY set (Linux passes it on to every
    accepted socket), for a server to inherit by file descriptor."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def tree_cpu_seconds(pid):
    """CPU time (user + system) of a process and its live descendants, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    return float(_tree_sum(pid, lambda entry, fields: (int(fields[11]) + int(fields[12])) / tick))


@dataclass
class Database:
    """Where the gateway records: ``url`` is a ``DATABASE_URL``."""

    kind: str  # "sqlite" or "postgres"
    url: str
    stop: object = None  # callable that stops a cluster this run started, or None


@dataclass
class Server:
    """One gateway server process (a process group of its own)."""

    name: str
    cmd: list
    env: dict
    port: int
    proc: subprocess.Popen = None
    log_path: str = ""
    extra: dict = field(default_factory=dict)
    listener: socket.socket = None  # a listening socket the server inherits (``--fd``)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, workdir, timeout=60.0):
        self.log_path = os.path.join(workdir, f"{self.name}.log")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                self.cmd, cwd=str(ROOT), env=self.env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=(self.listener.fileno(),) if self.listener else (),
            )
        if self.listener is not None:  # the server holds its own copy now
            self.listener.close()
            self.listener = None
        try:
            wait_http(self.url + "/v1/openapi.yaml", timeout=timeout, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def rss_kb(self):
        return tree_rss_kb(self.proc.pid) if self.proc else 0

    def cpu_seconds(self):
        return tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def fds(self):
        return tree_fds(self.proc.pid) if self.proc else 0

    def log_tail(self, size=3000):
        with contextlib.suppress(OSError), open(self.log_path, "rb") as fh:
            return fh.read()[-size:].decode("utf-8", "replace")
        return ""

    def stop(self, timeout=10.0):
        """Stop exactly the process group this object started (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


#: "auto": uvicorn with uvloop and httptools when installed (``uvicorn[standard]``), else
#: asyncio and h11; "plain": asyncio and h11 whatever is installed (``--uvicorn-stack``).
UVICORN_STACK = os.environ.get("BENCH_UVICORN_STACK", "auto")


def uvicorn_stack():
    """``(loop, http)`` of the uvicorn gateways."""
    if UVICORN_STACK == "plain":
        return "asyncio", "h11"
    return ("uvloop" if has_module("uvloop") else "asyncio",
            "httptools" if has_module("httptools") else "h11")


# How each serving configuration is started. ``{threads}`` is per worker.
ASGI_SERVERS = ("uvicorn", "granian-asgi")
SERVER_COMMANDS = {
    "granian-wsgi": lambda port, workers, threads: [
        str(VENV_BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads),
        "--backpressure", str(max(threads, 64)), "--backlog", "4096", "--no-ws",
        "--log-level", "warning", "project.wsgi:application",
    ],
    "granian-asgi": lambda port, workers, threads: [
        str(VENV_BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--blocking-threads", "1",
        "--backlog", "4096", "--no-ws", "--log-level", "warning", "project.asgi:application",
    ],
    # ASGI, one event loop a worker: uvloop and httptools only when installed (neither is a
    # requirement); asyncio's loop and h11 otherwise. Django has no lifespan protocol.
    # It listens on a socket the harness made (``--fd``, see tcp_listener): uvicorn's own for
    # --workers > 1 is made without IPPROTO_TCP, so asyncio never sets TCP_NODELAY on what it
    # accepts, and a response written as head + body waits out the client's delayed ACK
    # (measured: keep-alive c=1 p50 48 ms with --workers 2, 6 ms with new connections).
    "uvicorn": lambda port, workers, threads, fd=None: [
        str(VENV_BIN / "uvicorn"), *(["--fd", str(fd)] if fd is not None else
                                     ["--host", "127.0.0.1", "--port", str(port)]),
        "--workers", str(workers), "--loop", uvicorn_stack()[0], "--http", uvicorn_stack()[1],
        "--lifespan", "off",
        "--backlog", "4096", "--timeout-keep-alive", "75", "--no-access-log",
        "--log-level", "warning", "project.asgi:application",
    ],
    "gunicorn-gthread": lambda port, workers, threads: [
        str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--backlog", "4096",
        "--worker-connections", str(max(1000, threads * 2)), "--keep-alive", "75",
        "--log-level", "warning", "project.wsgi:application",
    ],
}


class Harness:
    """Owns the temporary folder, the database, the stand-in upstream and the gateways."""

    def __init__(self, *, keep=False):
        self.workdir = tempfile.mkdtemp(prefix="openai-django-bench-")
        self.keep = keep
        self.upstream = None
        self.servers = []
        self.databases = []
        self.client_key = None

    # -- upstream -------------------------------------------------------------------------

    def start_upstream(self):
        self.upstream = StandinServer(fast=True, log_level="warning")
        self.upstream.start()
        log.info("stand-in upstream at %s (pid %s)", self.upstream.base, self.upstream.pid)
        return self.upstream

    def configure_upstream(self, **knobs):
        self.upstream.configure(**knobs)

    # -- databases ------------------------------------------------------------------------

    def sqlite(self, name="bench"):
        path = os.path.join(self.workdir, f"{name}.sqlite3")
        db = Database("sqlite", f"sqlite:///{path}")
        self.prepare(db)
        self.databases.append(db)
        return db

    def postgres(self):
        """A PostgreSQL database: the project's private service if it runs (``scripts/services
        env``), else a throwaway cluster of this run's own under the temporary folder."""
        url = os.environ.get("BENCH_PG_URL") or self._services_pg_url()
        stop = None
        if not url:
            own = next((d for d in self.databases if d.kind == "postgres" and d.stop), None)
            if own is not None:  # this run's own cluster, started by an earlier scenario
                return own
            url, stop = self._own_cluster()
        if not url:
            return None
        db = Database("postgres", url, stop)
        try:
            self.prepare(db)
        except Exception:
            if stop:
                stop()
            raise
        self.databases.append(db)
        return db

    def _services_pg_url(self):
        script = ROOT / "scripts" / "services"
        if not script.exists():
            return None
        try:
            status = subprocess.run([str(script), "status"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=20)
            if "pg" not in status.stdout or "down" in _line(status.stdout, "pg"):
                return None
            out = subprocess.run([str(script), "env"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            line = line.removeprefix("export ").strip()
            if line.startswith("PG_DATABASE_URL="):
                base = line.split("=", 1)[1].strip("'\"")
                return self._fresh_pg_database(base)
        return None

    def _fresh_pg_database(self, base_url):
        """A database of this run's own on a shared cluster, dropped at the end."""
        import psycopg

        name = f"bench_{os.getpid()}"
        admin = base_url
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            log.warning("PostgreSQL at %s not usable: %s", base_url, exc)
            return None
        self._drop_pg = (admin, name)
        return base_url.rsplit("/", 1)[0] + "/" + name

    def _own_cluster(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins or shutil.which("runuser") is None:
            return None, None
        bindir = bins[-1]
        data = os.path.join(self.workdir, "pgdata")
        port = free_port()
        os.makedirs(data, exist_ok=True)
        shutil.chown(self.workdir, "postgres")
        shutil.chown(data, "postgres")
        run = ["runuser", "-u", "postgres", "--"]
        subprocess.run(run + [str(bindir / "initdb"), "-D", data, "-A", "trust", "-U",
                              "postgres", "--no-sync"], check=True, capture_output=True)
        with open(os.path.join(data, "postgresql.conf"), "a") as fh:
            fh.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nfsync = on\n"
                     f"unix_socket_directories = '{data}'\nmax_connections = 300\n"
                     f"shared_buffers = 256MB\n")
        subprocess.run(run + [str(bindir / "pg_ctl"), "-D", data, "-w", "-l",
                              os.path.join(data, "log"), "start"], check=True,
                       capture_output=True)

        def stop():
            subprocess.run(run + [str(bindir / "pg_ctl"), "-D", data, "-m", "fast", "-w",
                                  "stop"], capture_output=True)

        return f"postgres://postgres@127.0.0.1:{port}/postgres", stop

    def prepare(self, db):
        """Migrate the database and issue the client key the load generators use."""
        env = self.django_env(db)
        out = subprocess.run([sys.executable, "-m", "bench.prepare_db"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"preparing {db.kind} failed:\n{out.stderr[-3000:]}")
        key = out.stdout.strip().splitlines()[-1]
        if self.client_key is None:
            self.client_key = key
        elif key != self.client_key:
            raise RuntimeError("bench.prepare_db issued a different key")

    def django_env(self, db, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "OPENAI_"))}
        env.update({
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": db.url,
            "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_VAR_DIR": self.workdir,
            "DJANGO_MEDIA_ROOT": os.path.join(self.workdir, "media"),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "BENCH_CLIENT_KEY": "sk-od-bench-" + "k" * 40,
        })
        if self.upstream is not None:
            env["OPENAI_BASE_URL"] = self.upstream.url
            env["OPENAI_API_KEY"] = UPSTREAM_KEY
        env.update({k: str(v) for k, v in extra.items()})
        return env

    # -- gateways -------------------------------------------------------------------------

    def start_gateway(self, db, *, server="granian-wsgi", workers=2, threads=8, record=True,
                      name=None, env=None, stack=None):
        """``stack``: "plain" or "auto", uvicorn's loop and HTTP parser for this gateway
        (default: ``UVICORN_STACK``)."""
        global UVICORN_STACK
        if stack is not None:
            saved, UVICORN_STACK = UVICORN_STACK, stack
            try:
                return self.start_gateway(db, server=server, workers=workers, threads=threads,
                                          record=record, name=name, env=env)
            finally:
                UVICORN_STACK = saved
        listener = tcp_listener() if server == "uvicorn" else None
        port = listener.getsockname()[1] if listener else free_port()
        name = name or f"{server}-{db.kind}-{'rec' if record else 'norec'}-{port}"
        extra = {"OPENAI_DJANGO_RECORD": "1" if record else "0",
                 "OPENAI_DJANGO_WRITER": os.environ.get("BENCH_WRITER", "1"),
                 # BENCH_SQLITE_CHECKPOINT=0: SQLite's own auto-checkpoint, in the committing
                 # request (the "before" of openai_django/sqlite_wal.py).
                 "OPENAI_DJANGO_SQLITE_CHECKPOINT": os.environ.get("BENCH_SQLITE_CHECKPOINT",
                                                                   "1"),
                 # BENCH_GC_FREEZE=0: Python's collector as it is (openai_django/gcfreeze.py).
                 "OPENAI_DJANGO_GC_FREEZE": os.environ.get("BENCH_GC_FREEZE", "1"),
                 **(env or {})}
        if os.environ.get("BENCH_METRICS"):  # the metrics on (PROMETHEUS_MULTIPROC_DIR passes)
            extra.setdefault("OPENAI_DJANGO_METRICS_TOKEN", "bench-metrics-token")
        command = (SERVER_COMMANDS[server](port, workers, threads, fd=listener.fileno())
                   if listener else SERVER_COMMANDS[server](port, workers, threads))
        gateway = Server(name=name, cmd=command, env=self.django_env(db, **extra), port=port,
                         listener=listener)
        gateway.extra = {"server": server, "workers": workers, "threads": threads,
                         "record": record, "db": db.kind}
        if server == "uvicorn":
            gateway.extra["loop"], gateway.extra["http"] = uvicorn_stack()
        gateway.start(self.workdir)
        self.servers.append(gateway)
        log.info("gateway %s at %s", name, gateway.url)
        return gateway

    def stop_gateway(self, gateway):
        gateway.stop()
        if gateway in self.servers:
            self.servers.remove(gateway)

    def close(self):
        for gateway in list(self.servers):
            gateway.stop()
        self.servers.clear()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        drop = getattr(self, "_drop_pg", None)
        if drop:
            import psycopg

            with contextlib.suppress(Exception), psycopg.connect(drop[0], autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{drop[1]}" WITH (FORCE)')
        for db in self.databases:
            if db.stop:
                db.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _line(text, prefix):
    for line in text.splitlines():
        if line.strip().startswith(prefix):
            return line
    return ""
