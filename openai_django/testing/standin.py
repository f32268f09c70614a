"""Start and steer a stand-in upstream from tests and benchmarks.

The server always runs as a child process (never in the test's own interpreter) so that its
event loop is not slowed by, and does not slow, the code under test, and so that benchmarks
measure two processes talking over real sockets.  The control helpers use ``urllib`` only, so
this module has no third-party dependencies.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

log = logging.getLogger("openai_django.testing")

# Knob name -> CLI flag.  Booleans become bare flags.
_KNOB_FLAGS = {
    "api_key": "--api-key",
    "ttft_ms": "--ttft-ms",
    "gap_ms": "--gap-ms",
    "events": "--events",
    "image_base_url": "--image-base-url",
    "embedding_dimensions": "--embedding-dimensions",
    "job_seconds": "--job-seconds",
    "log_size": "--log-size",
    "max_body_mb": "--max-body-mb",
    "log_level": "--log-level",
    "tls_port": "--tls-port",
    "fast": "--fast",
    "no_uvloop": "--no-uvloop",
    "h2_max_streams": "--h2-max-streams",
    "tls_h2": "--tls-h2",
}

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_live: weakref.WeakSet[StandinServer] = weakref.WeakSet()


class StandinError(RuntimeError):
    """The stand-in could not be started, or a control call failed."""


class StandinServer:
    """A stand-in OpenAI upstream in a child process.

    ``StandinServer(host="127.0.0.1", port=0, tls=False, **knobs)`` where knobs are any of
    ``api_key, ttft_ms, gap_ms, events, image_base_url, embedding_dimensions, job_seconds, log_size,
    max_body_mb, log_level, tls_port, fast, no_uvloop, h2_max_streams, tls_h2`` (the CLI flags of
    ``python -m openai_django.testing.upstream``), plus ``startup_timeout`` (seconds).

    After :meth:`start`: ``url`` (``http://127.0.0.1:PORT/v1``, what an OpenAI client takes as
    ``base_url``), ``base`` (without ``/v1``), ``port``, and with ``tls=True`` also
    ``tls_url``, ``tls_base``, ``tls_port`` and ``ca_file`` (the self-signed certificate, to
    pass as ``verify=`` to an HTTP client).  ``log_path`` holds the server's stderr.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False,
                 *, startup_timeout: float = 20.0, **knobs: Any) -> None:
        unknown = set(knobs) - set(_KNOB_FLAGS)
        if unknown:
            raise TypeError(f"unknown StandinServer options: {sorted(unknown)}")
        self.host = host
        self.port = port
        self.tls = tls
        self.knobs = knobs
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.url = self.base = ""
        self.tls_url: str | None = None
        self.tls_base: str | None = None
        self.tls_port: int | None = None
        self.ca_file: str | None = None
        self.workdir: str | None = None
        self.log_path: str | None = None
        self._log_file: Any = None
        # Control calls must never go through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line :meth:`start` runs (handy for running it by hand)."""
        cmd = [sys.executable, "-m", "openai_django.testing.upstream", "--host", self.host,
               "--port", str(self.port), "--exit-with-parent"]
        for name, value in self.knobs.items():
            flag = _KNOB_FLAGS[name]
            if isinstance(value, bool):
                if value:
                    cmd.append(flag)
            elif value is not None:
                cmd += [flag, str(value)]
        if self.tls:
            cmd += ["--tls-cert", self.ca_file or "", "--tls-key",
                    os.path.join(self.workdir or "", "key.pem")]
        return cmd

    def start(self) -> StandinServer:
        if self.process is not None:
            raise StandinError("already started")
        self.workdir = tempfile.mkdtemp(prefix="openai-standin-")
        try:
            if self.tls:
                self.ca_file = make_self_signed_cert(self.workdir)
            self.log_path = os.path.join(self.workdir, "server.log")
            # Kept open for the life of the child process, which writes its stderr there.
            self._log_file = open(self.log_path, "wb")
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=self._log_file, env=env, start_new_session=True)
            _live.add(self)
            line = self._read_ready_line()
        except BaseException:
            self.stop()
            raise
        urls = line.split()[1:]
        self.base = urls[0]
        self.url = self.base + "/v1"
        self.port = int(self.base.rsplit(":", 1)[1])
        if len(urls) > 1:
            self.tls_base = urls[1]
            self.tls_url = self.tls_base + "/v1"
            self.tls_port = int(self.tls_base.rsplit(":", 1)[1])
        log.info("stand-in upstream pid %s at %s", self.process.pid, " ".join(urls))
        return self

    def _read_ready_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StandinError(f"stand-in not ready after {self.startup_timeout}s"
                                       f"{self._log_tail()}")
                if sel.select(remaining):
                    chunk = os.read(self.process.stdout.fileno(), 4096)
                    if not chunk:
                        self.process.wait(5)
                        raise StandinError(f"stand-in exited with {self.process.returncode}"
                                           f"{self._log_tail()}")
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode().strip()
        if not line.startswith("READY "):
            raise StandinError(f"unexpected first line from the stand-in: {line!r}")
        return line

    def _log_tail(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as fh:
            tail = fh.read()[-2000:].decode("utf-8", "replace")
        return f"; log tail:\n{tail}" if tail else ""

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate exactly the process this object started (SIGTERM, then SIGKILL)."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _live.discard(self)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control API -----------------------------------------------------------------------------

    def control(self, method: str, name: str, payload: Any = None,
                timeout: float = 10.0) -> Any:
        """Call ``/_control/<name>`` and return the decoded JSON answer."""
        if not self.base:
            raise StandinError("stand-in not started")
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.base}/_control/{name}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise StandinError(f"control {method} {name} failed: {exc.code} "
                               f"{exc.read().decode('utf-8', 'replace')}") from None

    def fault(self, **spec: Any) -> dict:
        """Queue a fault, e.g. ``fault(path="/v1/chat/completions", kind="status",
        status=429, retry_after=2)``; see the package docstring for the kinds."""
        return self.control("POST", "faults", spec)

    def faults(self) -> list[dict]:
        return self.control("GET", "faults")

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def configure(self, **knobs: Any) -> dict:
        """Change server defaults (``ttft_ms, gap_ms, events, image_base_url,
        embedding_dimensions, job_seconds``); returns the full config."""
        return self.control("POST", "config", knobs)

    def config(self) -> dict:
        return self.control("GET", "config")

    def requests(self, limit: int | None = None) -> list[dict]:
        """The logged ``/v1`` requests and image downloads, oldest first (none in fast mode)."""
        return self.control("GET", "requests" if limit is None else f"requests?limit={limit}")

    def clear_requests(self) -> None:
        self.control("DELETE", "requests")

    def goaway(self) -> int:
        """Send HTTP/2 GOAWAY on every HTTP/2 connection (in-flight streams finish); how
        many connections."""
        return self.control("POST", "goaway")["connections"]

    def reset(self) -> None:
        """Clear faults, the log, files and fine-tunes, and restore the starting config."""
        self.control("POST", "reset")

    def health(self) -> bool:
        try:
            return self.control("GET", "health", timeout=2.0).get("status") == "ok"
        except (OSError, StandinError):
            return False


def make_self_signed_cert(directory: str, days: int = 1) -> str:
    """Write ``cert.pem``/``key.pem`` for 127.0.0.1 and localhost; returns the cert path."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
           "-out", cert, "-days", str(days), "-subj", "/CN=127.0.0.1",
           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    try:
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)
    except FileNotFoundError:
        raise StandinError("the openssl command is needed for tls=True") from None
    except subprocess.CalledProcessError as exc:
        raise StandinError(f"openssl failed: {exc.stderr.decode('utf-8', 'replace')}") from None
    return cert


@atexit.register
def _stop_forgotten_servers() -> None:
    """Never leave a stand-in behind when the interpreter exits."""
    for server in list(_live):
        server.stop()
