"""Background calls on Celery: what queueing a call costs, how fast one worker drains calls,
and whether a concurrency cap holds while 1,000 jobs drain through several workers.

    .venv/bin/python -m bench.celery_bench                 # full run, a few minutes
    .venv/bin/python -m bench.celery_bench --quick         # smoke run (figures mean little)
    .venv/bin/python -m bench.celery_bench --json out.json --jobs 1000 --drain 1000 --cap 4

It prints a table and writes the figures as JSON (``bench/results/celery.json`` by default).
It starts, on 127.0.0.1 and on ports it picks, and stops by the process ids it started: a
stand-in upstream in fast mode, Celery workers (``celery -A project worker``, prefork) with the
Redis broker, and a Redis of its own unless ``--redis URL`` names one. The database is
``DATABASE_URL`` when set (as ``python -m bench`` does), else a tuned
SQLite under a temporary folder.

Figures:

* **enqueue**: ``tasks.submit_invocation`` per call, i.e. the INSERT of the queued record (with
  its payload) and the publish to Redis, on a kept connection, one call after another; and the
  same through ``openai_django.submit()``, which also builds and validates the request.
* **throughput**: N jobs queued first, then one worker started; jobs/s from the first attempt's
  start to the last call's end (from the records, so worker start-up is not counted), for chat
  and image jobs (``b64_json``: each image is decoded and stored as an artifact), prefork
  concurrency 1 and 2.
* **drain**: ``--drain`` jobs (half chat, half image) under ``CONCURRENCY = {"*": cap}`` through
  two workers of 4 processes each, the upstream taking ``--delay`` s per call: the most calls
  ever in flight, from the attempts' [start, end] in the log and from the Redis lease set
  sampled every 10 ms, must not exceed the cap; every call must end once, with its artifacts.
"""

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-bench-upstream"
log = logging.getLogger("bench.celery")


# -- processes -----------------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_ping(url):
    import redis

    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


class OwnRedis:
    """A redis-server of this run's own, on a free port, no persistence."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not redis_ping(self.url):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Worker:
    """``celery -A project worker`` in a process group of its own."""

    def __init__(self, queue, concurrency, env, workdir, overrides=None):
        self.name = f"bench-{uuid.uuid4().hex[:6]}"
        env = dict(env)
        env["BENCH_OPENAI_DJANGO"] = json.dumps({"TASK_QUEUE": queue, **(overrides or {})})
        self.log_path = Path(workdir) / f"{self.name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "project", "worker", "-Q", queue,
             "-c", str(concurrency), "-P", "prefork", "-n", f"{self.name}@%h",
             "--without-mingle", "--without-gossip", "--without-heartbeat",
             "--prefetch-multiplier", "1", "-l", "WARNING"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout=30):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self._log.close()

    def log_tail(self):
        return self.log_path.read_text(errors="replace")[-3000:]


# -- measuring -----------------------------------------------------------------------------


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def summary_ms(samples):
    return {"n": len(samples), "mean_ms": round(statistics.mean(samples) * 1000, 3),
            "p50_ms": round(percentile(samples, 50) * 1000, 3),
            "p99_ms": round(percentile(samples, 99) * 1000, 3),
            "per_s": round(len(samples) / sum(samples), 1)}


def job_kwargs(kind, n):
    if kind == "chat":
        return {"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Describe product {n}"}]}
    return {"prompt": f"Product photo {n}", "n": 1, "response_format": "b64_json",
            "size": "256x256"}


OPERATIONS = {"chat": "createChatCompletion", "image": "createImage"}


def enqueue(kind, count, start=0):
    """Queue ``count`` jobs; returns (ids, seconds per submit_invocation)."""
    from openai_django import api, tasks
    from openai_django.models import Call

    ids, times = [], []
    for n in range(start, start + count):
        invocation = api.build_invocation(OPERATIONS[kind], mode=Call.Mode.ASYNC,
                                          **job_kwargs(kind, n))
        began = time.perf_counter()
        call = tasks.submit_invocation(invocation)
        times.append(time.perf_counter() - began)
        ids.append(call.pk)
    return ids, times


def wait_finished(ids, timeout):
    from openai_django.models import Call

    deadline = time.monotonic() + timeout
    while True:
        done = Call.objects.filter(pk__in=ids, status__in=Call.Status.finished()).count()
        if done == len(ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {len(ids)} calls finished in {timeout}s")
        time.sleep(0.2)


def drained(ids):
    """Figures of finished calls, from their records."""
    from django.db.models import Count, Max, Min

    from openai_django.models import Call

    calls = Call.objects.filter(pk__in=ids)
    span = calls.aggregate(first=Min("started_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    statuses = dict(calls.values_list("status").annotate(n=Count("id")))
    # Time inside the task once it has the call (claim, upstream, record), against the time
    # per job: the difference is Celery's own (message, pool hand-off, ack).
    spans = [(done - began).total_seconds() for began, done in
             calls.values_list("started_at", "finished_at") if began and done]
    attempts = dict(calls.values_list("attempt_count").annotate(n=Count("id")))
    return {"jobs": len(ids), "seconds": round(seconds, 3),
            "ms_per_job": round(seconds / len(ids) * 1000, 3) if ids else None,
            "ms_in_task_after_claim": round(statistics.mean(spans) * 1000, 3) if spans else None,
            "jobs_per_s": round(len(ids) / seconds, 1) if seconds else None,
            "statuses": statuses, "attempt_counts": {str(k): v for k, v in attempts.items()}}


def max_overlap(ids):
    from openai_django.models import Call

    events = []
    for attempts in Call.objects.filter(pk__in=ids).values_list("attempts", flat=True):
        for attempt in attempts:
            if attempt.get("started") and attempt.get("ended"):
                events.append((datetime.fromisoformat(attempt["started"]), 1))
                events.append((datetime.fromisoformat(attempt["ended"]), -1))
    level = peak = 0
    for _, step in sorted(events):
        level += step
        peak = max(peak, level)
    return peak


def purge(queue, redis_url):
    import redis

    redis.Redis.from_url(redis_url).delete(queue)


# -- phases --------------------------------------------------------------------------------


def phase_enqueue(count, redis_url):
    """Per call: the whole of ``submit_invocation``, its two parts alone (the INSERT of the
    queued record; the publish of its message), and ``openai_django.submit()``."""
    from django.test import override_settings

    import openai_django
    from openai_django import api, recorder, tasks
    from openai_django.models import Call

    queue = f"bench-enqueue-{os.getpid()}"
    figures = {}
    with override_settings(OPENAI_DJANGO={**django_settings().OPENAI_DJANGO,
                                          "TASK_QUEUE": queue}):
        warm, _ = enqueue("chat", 50, start=10**6)  # connections, pools, the spec registry
        ids, times = enqueue("chat", count)
        figures["submit_invocation"] = summary_ms(times)
        inserts, publishes = [], []
        for n in range(count):
            invocation = api.build_invocation("createChatCompletion", mode=Call.Mode.ASYNC,
                                              **job_kwargs("chat", n))
            began = time.perf_counter()
            call = recorder.start(invocation, status=Call.Status.QUEUED, keep_payload=True)
            middle = time.perf_counter()
            tasks.enqueue(call.pk, 1)
            inserts.append(middle - began)
            publishes.append(time.perf_counter() - middle)
            ids.append(call.pk)
        figures["  of which INSERT of the record"] = summary_ms(inserts)
        figures["  of which publish to Redis"] = summary_ms(publishes)
        python_times = []
        for n in range(count):
            began = time.perf_counter()
            ids.append(openai_django.submit("createChatCompletion",
                                            **job_kwargs("chat", n)).pk)
            python_times.append(time.perf_counter() - began)
        figures["openai_django.submit (+ validation)"] = summary_ms(python_times)
    purge(queue, redis_url)
    forget(warm + ids)
    return figures


def phase_throughput(kind, concurrency, count, env, workdir, redis_url):
    from django.test import override_settings

    queue = f"bench-{kind}-c{concurrency}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    with override_settings(OPENAI_DJANGO={**django_settings().OPENAI_DJANGO,
                                          "TASK_QUEUE": queue}):
        ids, times = enqueue(kind, count)
    worker = Worker(queue, concurrency, env, workdir)
    try:
        wait_finished(ids, timeout=max(120, count))
    except RuntimeError:
        log.error("worker log:\n%s", worker.log_tail())
        raise
    finally:
        worker.stop()
        purge(queue, redis_url)
    figures = drained(ids)
    figures.update({"kind": kind, "concurrency": concurrency,
                    "enqueue": summary_ms(times), "max_in_flight": max_overlap(ids)})
    forget(ids)
    return figures


def forget(ids):
    """Delete a phase's calls (and their stored files): the database may be the suite's,
    shared with the benchmarks that run after this one."""
    from openai_django.models import Call

    for start in range(0, len(ids), 500):
        Call.objects.filter(pk__in=ids[start:start + 500]).delete()


def phase_noop(count, concurrency, env, workdir, redis_url):
    """Celery's own floor: ``count`` no-op tasks with perform_call's options, one worker."""
    import redis

    from bench.celery_noop import noop

    queue = f"bench-noop-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    key = f"bench:noop:{queue}"
    for _ in range(count):
        noop.apply_async(args=(key,), queue=queue)
    client = redis.Redis.from_url(redis_url)
    worker = Worker(queue, concurrency, env, workdir)
    try:
        deadline = time.monotonic() + max(120, count / 10)
        while int(client.get(key) or 0) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no-op tasks not done:\n{worker.log_tail()}")
            time.sleep(0.1)
    finally:
        worker.stop()
        purge(queue, redis_url)
    seconds = float(client.get(f"{key}:last")) - float(client.get(f"{key}:first"))
    client.delete(key, f"{key}:first", f"{key}:last")
    return {"kind": "no-op task", "concurrency": concurrency, "jobs": count,
            "seconds": round(seconds, 3), "jobs_per_s": round(count / seconds, 1),
            "ms_per_job": round(seconds / count * 1000, 3)}


def phase_drain(count, cap, delay, env, workdir, redis_url, standin):
    from django.test import override_settings

    from openai_django import concurrency
    from openai_django.models import Artifact, Call

    queue = f"bench-drain-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    overrides = {"CONCURRENCY": {"*": cap}, "CONCURRENCY_BACKEND": "redis",
                 "CONCURRENCY_REDIS_URL": redis_url}
    settings_now = {**django_settings().OPENAI_DJANGO, "TASK_QUEUE": queue, **overrides}
    for path in ("/v1/chat/completions", "/v1/images/generations"):
        standin.fault(path=path, kind="delay", seconds=delay, times=-1)
    samples = []
    stop_sampling = threading.Event()
    with override_settings(OPENAI_DJANGO=settings_now):
        half = count // 2
        chat_ids, _ = enqueue("chat", half)
        image_ids, _ = enqueue("image", count - half)
        ids = chat_ids + image_ids
        key = concurrency.caps_for("gpt-4o-mini")[0][0]

        def sample():
            backend = concurrency.get_backend()
            while not stop_sampling.is_set():
                samples.append(backend.in_use(key))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        workers = [Worker(queue, 4, env, workdir, overrides) for _ in range(2)]
        try:
            wait_finished(ids, timeout=max(300, count * delay * 3 / cap))
        except RuntimeError:
            for worker in workers:
                log.error("worker log:\n%s", worker.log_tail())
            raise
        finally:
            stop_sampling.set()
            sampler.join()
            for worker in workers:
                worker.stop()
            purge(queue, redis_url)
            standin.clear_faults()
    figures = drained(ids)
    images = Artifact.objects.filter(call_id__in=image_ids, role=Artifact.Role.GENERATED_IMAGE)
    with_image = images.exclude(file="").filter(bytes__gt=0).values("call_id").distinct().count()
    figures.update({
        "cap": cap, "upstream_delay_s": delay, "workers": "2 x prefork 4",
        "max_in_flight_from_log": max_overlap(ids),
        "max_leases_sampled": max(samples) if samples else None,
        "lease_samples": len(samples),
        "image_calls_with_stored_image": with_image, "image_calls": len(image_ids),
        "ideal_jobs_per_s": round(cap / delay, 1),
        "every_call_once": Call.objects.filter(pk__in=ids, attempt_count=1).count() == len(ids),
    })
    forget(ids)
    return figures


def django_settings():
    from django.conf import settings

    return settings


# -- main ----------------------------------------------------------------------------------


def print_table(results):
    lines = ["", "Background calls (Celery, Redis broker, stand-in upstream in fast mode)", ""]
    enq = results["enqueue"]
    lines.append(f"{'enqueue, one call':<44}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
                 f"{'calls/s':>9}")
    for name, fig in enq.items():
        lines.append(f"  {name:<42}{fig['p50_ms']:>9}{fig['p99_ms']:>9}{fig['mean_ms']:>9}"
                     f"{fig['per_s']:>9}")
    header = (f"{'through one worker':<44}{'jobs':>9}{'jobs/s':>9}{'in flight':>10}"
              f"{'ok':>7}{'ms/job':>9}{'in task':>9}")
    lines += ["", header]
    for fig in results["throughput"]:
        name = f"  {fig['kind']}, prefork concurrency {fig['concurrency']}"
        ok = fig["statuses"].get("succeeded", 0)
        lines.append(f"{name:<44}{fig['jobs']:>9}{fig['jobs_per_s']:>9}"
                     f"{fig['max_in_flight']:>10}{ok:>7}{fig['ms_per_job']:>9}"
                     f"{fig['ms_in_task_after_claim']:>9}")
    for fig in results.get("celery_floor", []):
        name = f"  no-op task (Celery alone), prefork {fig['concurrency']}"
        lines.append(f"{name:<44}{fig['jobs']:>9}{fig['jobs_per_s']:>9}{'':>10}{'':>7}")
    drain = results.get("drain")
    if drain:
        title = (f"drain of {drain['jobs']} jobs (chat + image) under CONCURRENCY "
                 f"{{'*': {drain['cap']}}}, {drain['workers']}, upstream "
                 f"{drain['upstream_delay_s'] * 1000:g} ms a call:")
        body = (f"  {drain['jobs_per_s']} jobs/s (ideal {drain['ideal_jobs_per_s']}), "
                f"{drain['seconds']} s; most in flight: {drain['max_in_flight_from_log']} "
                f"(log), {drain['max_leases_sampled']} (leases sampled "
                f"{drain['lease_samples']} times); statuses {drain['statuses']}; "
                f"each call one attempt: {drain['every_call_once']}; image calls with "
                f"their stored image: {drain['image_calls_with_stored_image']}/"
                f"{drain['image_calls']}")
        lines += ["", title, body]
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "celery.json"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per throughput run")
    parser.add_argument("--enqueue", type=int, default=2000, help="calls timed when queueing")
    parser.add_argument("--drain", type=int, default=1000, help="jobs of the capped drain")
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.05, help="upstream seconds a call")
    parser.add_argument("--redis", default=None)
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.enqueue, args.drain = 100, 200, 100
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    workdir = tempfile.mkdtemp(prefix="openai-django-celery-bench-")
    own_redis = standin = None
    try:
        # A Redis of its own unless told: a shared one may be stopped by another run.
        redis_url = args.redis
        if not redis_url or not redis_ping(redis_url):
            own_redis = OwnRedis()
            redis_url = own_redis.url
        from openai_django.testing import StandinServer

        standin = StandinServer(fast=True, api_key=UPSTREAM_KEY, log_level="warning").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_OPENAI")}
        env.update({
            "DJANGO_SETTINGS_MODULE": "bench.celery_settings",
            "DJANGO_DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": redis_url,
            "OPENAI_BASE_URL": standin.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "PYTHONPATH": str(ROOT),
        })
        env.setdefault("DJANGO_MEDIA_ROOT", str(Path(workdir) / "media"))
        env.setdefault("DJANGO_VAR_DIR", workdir)
        if "DATABASE_URL" not in env:
            env["DATABASE_URL"] = f"sqlite:///{workdir}/celery-bench.sqlite3"
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)  # nothing to do if migrated
        from django.db import connection

        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "db": connection.vendor,
                        "broker": "redis", "load_before": os.getloadavg()},
            "command": " ".join([Path(sys.executable).name, "-m", "bench.celery_bench",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.now().isoformat(timespec="seconds"),
        }
        log.info("enqueue cost: %d calls", args.enqueue)
        results["enqueue"] = phase_enqueue(args.enqueue, redis_url)
        results["throughput"] = []
        results["celery_floor"] = []
        for concurrency in (1, 2):
            log.info("Celery's floor: %d no-op tasks, prefork %d", args.jobs, concurrency)
            results["celery_floor"].append(phase_noop(args.jobs, concurrency, env, workdir,
                                                      redis_url))
        for kind in ("chat", "image"):
            for concurrency in (1, 2):
                log.info("throughput: %d %s jobs, prefork %d", args.jobs, kind, concurrency)
                results["throughput"].append(phase_throughput(
                    kind, concurrency, args.jobs, env, workdir, redis_url))
        if not args.skip_drain:
            log.info("drain: %d jobs under a cap of %d", args.drain, args.cap)
            results["drain"] = phase_drain(args.drain, args.cap, args.delay, env, workdir,
                                           redis_url, standin)
        results["machine"]["load_after"] = os.getloadavg()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print_table(results)
        log.info("figures written to %s", args.json)
    finally:
        if standin is not None:
            standin.stop()
        if own_redis is not None:
            own_redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
