"""Instructions a call: the gateway's own work, counted by callgrind, steady on a busy machine.

    python -m bench.instructions                       # recorded chat call, WSGI entry
    python -m bench.instructions --no-record           # the same, recording off
    python -m bench.instructions --entry asgi --stream # a streamed chat call, lean ASGI entry
    python -m bench.instructions --calls 200 --writer 0 --checkpoint 0
    python -m bench.instructions --cpu --calls 3000    # no callgrind: user + system CPU a call
    python -m bench.instructions --perf --calls 3000   # where the CPU goes, recording on / off
    python -m bench.instructions --cpu --calls 300 --system-bytes 1048576  # a 1 MB prompt

Wall-clock and CPU-time figures on a shared two-core machine move by a third from one run to
the next; the number of instructions a call executes does not (two runs of the same tree
agree within about 15 K of 2.5 M with ``--writer 0 --checkpoint 0``; with the writer and the
checkpoint thread on, within 50-100 K: how much they do depends on how long a run takes).
This is how each hot-path change of issue 14's last cut was measured.

How: the stand-in upstream runs in its own process (not counted); the gateway runs in this
one, under ``valgrind --tool=callgrind``, with the bench's settings (SQLite WAL, the writer,
the checkpointer, ``DEBUG=False``). Two runs are made side by side, one serving 30 warm-up
calls and ``--calls`` measured calls, the other the 30 warm-up calls alone: the difference
divided by ``--calls`` is one call's instructions (start-up, imports and the warm-up cancel
out). The WSGI entry is ``project.wsgi.application`` called with a WSGI environ; the ASGI
entry ``project.asgi.application`` driven with ASGI messages on an event loop. No HTTP
server is in the count: its cost is the server's (granian: about 20 us a request here).

Needs valgrind (Debian: ``apt-get install valgrind``).

``--perf`` counts time, not instructions: it serves the calls twice without callgrind,
recording on and recording off, with ``perf record`` attached to the gateway's process for the
measured calls only (after the warm-up; the stand-in is another process, not sampled), and
prints the CPU a call by library (the Python interpreter, SQLite, the kernel, libc ...) for
both and their difference: the record's cost split by where it runs. Instructions undercount
what the record costs (the kernel's part, the WAL's ``pwrite`` calls and SQLite's locks, is
not in them, nor the cache misses of the record's scattered Python objects): on 2026-12-03 a
recorded call took 0.72 M instructions more than an unrecorded one (half again as many) but
twice its CPU. Needs perf (Debian: ``apt-get install linux-perf``) and a
``perf_event_paranoid`` that lets a user sample its own processes.
"""

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARM_UP = 30


def _serve(args):
    """The inner run: serve ``args.calls`` calls after the warm-up (under callgrind)."""
    sys.path.insert(0, ROOT)
    from bench import scenarios
    from bench.harness import Harness

    with Harness() as harness:
        harness.start_upstream()
        db = harness.sqlite()
        os.environ.update(harness.django_env(
            db, OPENAI_DJANGO_RECORD="1" if args.record else "0",
            OPENAI_DJANGO_WRITER=str(args.writer),
            OPENAI_DJANGO_SQLITE_CHECKPOINT=str(args.checkpoint),
            OPENAI_DJANGO_GC_FREEZE="1"))
        import django

        django.setup()
        request = dict(scenarios.CHAT)
        if args.system_bytes:
            request["messages"] = [{"role": "system", "content": _filler(args.system_bytes)},
                                   *request["messages"]]
        if args.stream:
            request["stream"] = True
        body = json.dumps(request).encode()
        key = os.environ["BENCH_CLIENT_KEY"]
        one = _wsgi_call(body, key) if args.entry == "wsgi" else _asgi_call(body, key)
        for _ in range(WARM_UP):
            one()
        sampler = _sample(args.perf_out) if args.perf_out else None
        started = os.times()
        for _ in range(args.calls):
            one()
        ended = os.times()
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)
    return started, ended


PERF_HZ = 1999  # samples a second of CPU; odd, so as not to beat with a periodic timer


def _sample(out):
    """``perf record`` attached to this process (every thread) until it gets SIGINT."""
    sampler = subprocess.Popen(
        ["perf", "record", "-q", "-F", str(PERF_HZ), "-p", str(os.getpid()), "-o", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not os.path.exists(out) or os.path.getsize(out) == 0:  # attached: its header is out
        if sampler.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"perf record did not start: {sampler.stderr.read().decode()}")
        time.sleep(0.05)
    return sampler


def _split(out, calls):
    """CPU microseconds a call by shared object, from ``perf report``'s sample counts."""
    report = subprocess.run(["perf", "report", "-i", out, "--sort", "dso", "--stdio", "-n",
                             "-q"], capture_output=True, text=True, check=True).stdout
    split = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1].isdigit():
            name = _library(" ".join(parts[2:]))
            split[name] = split.get(name, 0) + int(parts[1]) / PERF_HZ / calls * 1e6
    return split


def _library(dso):
    """A readable name for a shared object (``libpython3.11.so.1.0`` -> ``python``)."""
    if dso.startswith("[kernel"):
        return "kernel"
    for prefix, name in (("libpython", "python"), ("libsqlite3", "sqlite3"), ("libc.", "libc"),
                         ("_sqlite3", "sqlite3 module"), ("orjson", "orjson"),
                         ("jsonschema_rs", "jsonschema-rs")):
        if dso.startswith(prefix):
            return name
    return "other"


def _perf(args):
    """Both modes sampled, one after the other; the table of their CPU a call by library."""
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    out_dir = args.keep or tempfile.mkdtemp(prefix="od-perf-")
    os.makedirs(out_dir, exist_ok=True)
    splits = {}
    for record in (True, False):
        out = os.path.join(out_dir, f"perf.{'on' if record else 'off'}.data")
        subprocess.run(_inner(args, args.calls, record, "--perf-out", out), cwd=ROOT,
                       check=True)
        splits[record] = _split(out, args.calls)
    on, off = splits[True], splits[False]
    names = sorted(set(on) | set(off), key=lambda n: -(on.get(n, 0) - off.get(n, 0)))
    print(f"CPU a call by library, us ({_what(args, both=True)}; "
          f"{args.calls} calls, perf at {PERF_HZ} Hz, load {os.getloadavg()[0]:.1f})")
    print(f"{'library':<16}{'recording on':>14}{'recording off':>15}{'the record':>12}")
    for name in names + ["all"]:
        a = sum(on.values()) if name == "all" else on.get(name, 0)
        b = sum(off.values()) if name == "all" else off.get(name, 0)
        print(f"{name:<16}{a:>14.0f}{b:>15.0f}{a - b:>12.0f}")
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


def _wsgi_call(body, key):
    from project.wsgi import application

    def one():
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "SCRIPT_NAME": "",
            "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)), "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {key}", "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1"}
        statuses = []
        response = application(environ, lambda status, headers: statuses.append(status))
        content = b"".join(response)
        response.close()
        if not statuses[0].startswith("200"):
            raise SystemExit(f"the gateway answered {statuses[0]}: {content[:300]!r}")
    return one


def _asgi_call(body, key):
    from project.asgi import application

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000)}
    loop = asyncio.new_event_loop()

    async def call():
        sent, ended, first = [], asyncio.Event(), [True]

        async def receive():
            if first[0]:
                first[0] = False
                return {"type": "http.request", "body": body, "more_body": False}
            await ended.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                ended.set()

        await application(dict(scope), receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"the gateway answered {sent[0]['status']}: {sent[1:2]}")

    return lambda: loop.run_until_complete(call())


def _filler(size):
    """``size`` characters of prose: a long system prompt (documents, a long conversation)
    before a short question, which the stand-in answers briefly (it quotes the last user
    message)."""
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    return (words * (size // len(words) + 1))[:size]


def _count(args, calls, out_dir):
    """Start one callgrind run serving ``calls`` measured calls: (process, its log path)."""
    log = os.path.join(out_dir, f"callgrind.{calls}.log")
    command = ["valgrind", "--tool=callgrind",
               f"--callgrind-out-file={os.path.join(out_dir, f'callgrind.{calls}.out')}",
               *_inner(args, calls, args.record)]
    handle = open(log, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT), log


def _inner(args, calls, record, *extra):
    """The command of an inner run: this module serving ``calls`` measured calls."""
    return [sys.executable, "-m", "bench.instructions", "--inner", *extra, "--calls",
            str(calls), "--entry", args.entry, "--writer", str(args.writer),
            "--checkpoint", str(args.checkpoint), *(["--stream"] if args.stream else []),
            "--system-bytes", str(args.system_bytes), *([] if record else ["--no-record"])]


def _collected(log):
    with open(log) as handle:
        match = re.search(r"Collected : (\d+)", handle.read())
    if match is None:
        raise SystemExit(f"callgrind did not finish: see {log}")
    return int(match.group(1))


def _cpu(args):
    """The same calls in this process, no callgrind: user and system CPU a measured call.
    Unlike the instruction count it moves with the machine's load (and the kernel's part,
    the WAL's writes and SQLite's file locks, is in it)."""
    started, ended = _serve(args)
    user = (ended.user - started.user) / args.calls * 1e6
    system = (ended.system - started.system) / args.calls * 1e6
    print(f"{user:.0f} us user + {system:.0f} us system CPU a call ({_what(args)}; "
          f"{args.calls} calls, load {os.getloadavg()[0]:.1f})")
    return 0


def _what(args, both=False):
    """The calls served, for a result's line (``both``: recording on and off alike)."""
    mode = "" if both else f"recording {'on' if args.record else 'off'}, "
    prompt = f" with a {args.system_bytes:,}-byte system prompt" if args.system_bytes else ""
    return (f"{'streamed ' if args.stream else ''}chat call{prompt}, {args.entry.upper()} "
            f"entry, {mode}writer {args.writer}, checkpointer {args.checkpoint}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--entry", choices=("wsgi", "asgi"), default="wsgi")
    parser.add_argument("--stream", action="store_true", help="a streamed chat call")
    parser.add_argument("--no-record", dest="record", action="store_false")
    parser.add_argument("--writer", type=int, choices=(0, 1), default=1)
    parser.add_argument("--checkpoint", type=int, choices=(0, 1), default=1)
    parser.add_argument("--system-bytes", type=int, default=0,
                        help="a system message of this many characters before the question")
    parser.add_argument("--keep", help="a folder to keep callgrind's outputs in")
    parser.add_argument("--cpu", action="store_true",
                        help="no callgrind: the user and system CPU a call (os.times)")
    parser.add_argument("--perf", action="store_true",
                        help="no callgrind: perf's CPU a call by library, recording on and off")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--perf-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _serve(args)
        return 0
    if args.cpu:
        return _cpu(args)
    if args.perf:
        return _perf(args)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    out_dir = args.keep or tempfile.mkdtemp(prefix="od-instructions-")
    os.makedirs(out_dir, exist_ok=True)
    runs = [_count(args, 0, out_dir), _count(args, args.calls, out_dir)]
    for process, _ in runs:
        process.wait()
    base, measured = (_collected(log) for _, log in runs)
    per_call = (measured - base) / args.calls
    print(f"{per_call / 1e6:.3f} M instructions a call ({_what(args)}; {args.calls} calls)")
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
