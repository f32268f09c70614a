"""Run the stand-in OpenAI upstream: ``python -m openai_django.testing.upstream``.

Prints exactly one line to stdout once the sockets listen::

    READY http://127.0.0.1:PORT [https://127.0.0.1:TLSPORT]

so that a parent process (see :class:`openai_django.testing.StandinServer`) knows the ports
chosen for ``--port 0``.  Logs go to stderr.  SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence

from .app import StandinApp
from .http11 import HTTPProtocol
from .state import Config

log = logging.getLogger("openai_django.testing.upstream")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m openai_django.testing.upstream",
        description="Local OpenAI-compatible stand-in server for tests and benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--tls-cert", help="PEM certificate: also listen with TLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-port", type=int, default=0, help="TLS port (0 picks a free one)")
    p.add_argument("--api-key", help="accept only this bearer token (default: any non-empty)")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first SSE event")
    p.add_argument("--gap-ms", type=float, default=0.0, help="delay between SSE events")
    p.add_argument("--events", type=int, default=8, help="SSE events per completion stream")
    p.add_argument("--image-base-url", help="base of generated image URLs (default: this server)")
    p.add_argument("--embedding-dimensions", type=int, default=1536)
    p.add_argument("--job-seconds", type=float, default=None,
                   help="how long batches, fine-tuning jobs, background responses and videos "
                        "take to finish (default 0.3, 0 with --fast)")
    p.add_argument("--log-size", type=int, default=200, help="requests kept for /_control/requests")
    p.add_argument("--max-body-mb", type=int, default=512)
    p.add_argument("--fast", action="store_true", help="benchmark mode: no request log")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="exit when the parent process goes away (no orphans in CI)")
    p.add_argument("--h2-max-streams", type=int, default=None,
                   help="HTTP/2 MAX_CONCURRENT_STREAMS a connection (default 100)")
    p.add_argument("--tls-h2", action="store_true",
                   help="offer h2 in ALPN on the TLS port (else HTTP/1.1 only there)")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    p.add_argument("--log-level", default="warning")
    return p


def raise_fd_limit() -> None:
    """Thousands of concurrent streams need thousands of sockets."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:  # pragma: no cover - platform specific
        log.warning("could not raise the open-file limit: %s", exc)


def _url(scheme: str, host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def serve(opts: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    config = Config(ttft_ms=opts.ttft_ms, gap_ms=opts.gap_ms, events=opts.events,
                    image_base_url=opts.image_base_url,
                    embedding_dimensions=opts.embedding_dimensions,
                    job_seconds=(opts.job_seconds if opts.job_seconds is not None
                                 else 0.0 if opts.fast else 0.3))
    app = StandinApp(api_key=opts.api_key, fast=opts.fast, config=config, log_size=opts.log_size)
    max_body = opts.max_body_mb * 1024 * 1024

    server = await loop.create_server(
        lambda: HTTPProtocol(app, loop, scheme="http", max_body=max_body,
                             h2_max_streams=opts.h2_max_streams),
        opts.host, opts.port, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    urls = [_url("http", opts.host, port)]
    servers = [server]
    if opts.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        ctx.set_alpn_protocols(["h2", "http/1.1"] if opts.tls_h2 else ["http/1.1"])
        tls_server = await loop.create_server(
            lambda: HTTPProtocol(app, loop, scheme="https", max_body=max_body,
                                 h2_max_streams=opts.h2_max_streams),
            opts.host, opts.tls_port, ssl=ctx, backlog=4096, reuse_address=True)
        urls.append(_url("https", opts.host, tls_server.sockets[0].getsockname()[1]))
        servers.append(tls_server)
    config.default_image_base_url = urls[-1]

    stop = loop.create_future()

    def request_stop(*_: object) -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    watcher = None
    if opts.exit_with_parent:
        watcher = loop.create_task(_watch_parent(os.getppid(), request_stop))

    # Long-lived startup objects need no more scanning: fewer, shorter GC pauses in benchmarks.
    gc.collect()
    gc.freeze()
    log.info("listening on %s (fast=%s)", " ".join(urls), opts.fast)
    sys.stdout.write("READY " + " ".join(urls) + "\n")
    sys.stdout.flush()
    try:
        await stop
    finally:
        if watcher is not None:
            watcher.cancel()
        for srv in servers:
            srv.close()


async def _watch_parent(parent_pid: int, request_stop) -> None:
    """Stop once re-parented: the process that started us is gone."""
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            log.warning("parent %s went away; stopping", parent_pid)
            request_stop()
            return


def _loop_factory(no_uvloop: bool):
    if no_uvloop:
        return None
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if bool(opts.tls_cert) != bool(opts.tls_key):
        build_parser().error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=getattr(logging, str(opts.log_level).upper(), logging.WARNING),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    factory = _loop_factory(opts.no_uvloop)
    try:
        if factory is not None and hasattr(asyncio, "Runner"):
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(serve(opts))
        else:
            asyncio.run(serve(opts))
    except KeyboardInterrupt:  # pragma: no cover - signal handler normally catches it
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
