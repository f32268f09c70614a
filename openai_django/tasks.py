"""Background calls on Celery: queue a call, perform it on a worker, retry it, recover it.

A background call is a :class:`~openai_django.models.Call` row first (written and committed by
:func:`submit_invocation`), then a message that carries only its id and the number of the
attempt it is for. Every move between states is a compare-and-set on the row
(:meth:`CallManager.transition`), so a message delivered twice, a sweep and a cancel
racing each other can never make two upstream requests for the same attempt::

    queued (k attempts made) --claim--> running (attempt k+1) --> succeeded | failed
       ^   |                               |
       |   +--cancel--> cancelled          +-- 429 / 5xx / connection error, attempts left:
       |                                   |   back to queued, due after the backoff
       +-----------------------------------+-- holder lost (kill -9) or stale: back to queued,
                                               or failed with outcome "lost" (unknown)

The task runs with ``acks_late`` and ``reject_on_worker_lost``, so a worker process killed in
the middle of a call has its message redelivered; the new delivery sees the call ``running``
under a dead process and recovers it. When the whole worker dies (or the broker cannot
redeliver, like the filesystem broker), :func:`sweep_stale_calls` does the same for calls left
``running`` longer than ``STALE_RUNNING_AFTER``; each worker also sends one sweep when it
starts, which recovers at once the calls of dead processes on its own host.
"""

import logging
import os
import random
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from email.utils import parsedate_to_datetime

import orjson
from celery import shared_task
from celery.signals import worker_ready
from django.db import close_old_connections, transaction
from django.utils import timezone

from openai_django import concurrency, gateway, invocation, kinds, process, recorder
from openai_django.conf import app_settings
from openai_django.errors import Conflict, OpenAIDjangoError, UpstreamTimeout, UpstreamUnavailable
from openai_django.models import Artifact, Call
from openai_django.process import HOST, _own_start, _pid_alive, _proc_start  # noqa: F401

logger = logging.getLogger("openai_django.tasks")

# Statuses worth another attempt besides every 5xx (those the official SDKs retry too).
RETRY_STATUSES = frozenset({408, 409, 429})

# Ids of the calls this process is performing right now (a threads pool shares one pid).
_active = set()


class QueueUnavailable(OpenAIDjangoError):
    status_code = 503
    error_type = "server_error"
    default_code = "queue_unavailable"
    default_message = "The background task queue could not be reached; the call was not queued."


class CallLost(OpenAIDjangoError):
    status_code = 500
    error_type = "server_error"
    default_code = "call_lost"
    default_message = ("The worker performing this call was lost (killed or crashed) and the "
                       "call was not repeated: whether the upstream received it is unknown.")


# -- queueing ------------------------------------------------------------------------------


def _queue_options():
    queue = app_settings.TASK_QUEUE
    return {"queue": queue} if queue else {}


def enqueue(call_id, attempt=1, countdown=None):
    """Publish the message for one attempt of a call. The caller makes sure the row is
    committed first (:func:`submit_invocation` does)."""
    options = _queue_options()
    if countdown:
        options["countdown"] = countdown
    perform_call.apply_async(args=(str(call_id), attempt), **options)


def submit_invocation(invocation):
    """Record a call as ``queued`` and have a worker perform it; returns the :class:`Call`.

    The message is published only once the row is committed: at once outside a transaction,
    on commit inside one (so a worker never looks for a row it cannot see yet, and a rolled
    back request queues nothing). Multipart uploads are stored as artifacts by the recorder
    and read back from storage by the worker.
    """
    invocation.mode = Call.Mode.ASYNC
    call = recorder.start(invocation, status=Call.Status.QUEUED, keep_payload=True)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: _publish_first(call, raise_errors=False))
    else:
        _publish_first(call, raise_errors=True)
    return call


def _publish_first(call, *, raise_errors):
    try:
        enqueue(call.pk, 1)
    except Exception as exc:
        logger.exception("Could not queue call %s", call.pk)
        error = QueueUnavailable(call=call)
        recorder.fail(call, error, outcome=Call.Outcome.ERROR)
        if raise_errors:
            raise error from exc


def replay(call_id, overrides=None, user=None):
    """Queue a new call that repeats a recorded one (``overrides`` merged into its body),
    linked to it by ``replay_of``; returns the new, queued :class:`Call`."""
    original = Call.objects.get(pk=call_id)
    replayed = invocation.from_call(
        original, overrides=overrides, mode=Call.Mode.ASYNC, source=Call.Source.REPLAY,
        replay_of=original, user=user,
    )
    return submit_invocation(replayed)


def cancel(call):
    """Cancel a call that is still queued (waiting for a worker, a slot or a retry).

    Returns ``False`` if it is already running or finished: a call the upstream may be
    answering cannot be taken back.
    """
    error = Conflict("The call was cancelled before it was sent upstream.",
                     code="call_cancelled")
    if not Call.objects.transition(call, {"status": Call.Status.QUEUED},
                               status=Call.Status.CANCELLED, outcome=Call.Outcome.CANCELLED,
                               error=error.body()["error"], finished_at=timezone.now()):
        return False
    recorder.fail(call, error, outcome=Call.Outcome.CANCELLED)
    return True


def call_ended(call):
    """What a finished call still owes (see ``handlers.send_callback``)."""
    if call.metadata_only and call.mode == Call.Mode.ASYNC:
        # Kept only so that the worker could send them: a metadata-only call keeps no files.
        for artifact in call.artifacts.filter(role__in=Artifact.INPUT_ROLES):
            artifact.delete()
    if call.callback:
        send_callback(call)


def send_callback(call):
    """Send the call's ``callback`` task its id, once the finished row is committed."""
    name = call.callback
    call_id = str(call.pk)

    def publish():
        app = perform_call.app
        try:
            task = app.tasks.get(name)
            if task is not None:
                task.apply_async(args=(call_id,))
            else:
                app.send_task(name, args=(call_id,))
        except Exception:
            logger.exception("Could not send callback %s for call %s", name, call_id)

    transaction.on_commit(publish)


# -- performing ----------------------------------------------------------------------------


@shared_task(bind=True, name="openai_django.perform_call", acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def perform_call(self, call_id, attempt=1):
    """Perform attempt number ``attempt`` of a queued call (messages carry ids, never rows)."""
    # What Django does at each request: drop a connection that is broken or older than
    # CONN_MAX_AGE, keep the others (with CELERY_DB_REUSE_MAX set, Celery's own fixup no
    # longer reconnects around every task: 8 ms a task on PostgreSQL, 3 on SQLite).
    close_old_connections()
    return perform(call_id, attempt, task_id=self.request.id or "")


def perform(call_id, attempt=1, task_id=""):
    """The body of :func:`perform_call`; returns a word saying what it did (for logs/tests)."""
    try:
        # get(), not first(): no ORDER BY to compile; the user and key come in the same query
        # (the rebuilt invocation refers to them).
        call = Call.objects.select_related("user", "api_key").get(pk=call_id)
    except Call.DoesNotExist:
        logger.warning("Call %s does not exist (deleted?); message dropped", call_id)
        return "missing"
    if call.status == Call.Status.RUNNING and call.attempt_count == attempt:
        # Redelivered: the worker that took this attempt died, or this is a duplicate.
        holder = holder_state(call)
        if holder != "dead":
            logger.info("Call %s attempt %s is held by a %s worker; message dropped",
                        call.pk, attempt, holder)
            return "in_progress"
        attempt = _recover_lost(call, requeue=False)
        if attempt is None:
            return "lost"
    if call.status != Call.Status.QUEUED or call.attempt_count != attempt - 1:
        logger.info("Message for attempt %s of call %s is stale (call %s after %s attempts)",
                    attempt, call.pk, call.status, call.attempt_count)
        return "stale"
    try:
        rebuilt = invocation.from_call(call)
    except Exception as exc:
        logger.exception("Call %s cannot be rebuilt", call.pk)
        if _claim(call, attempt, task_id, None):
            call.attempts[-1].update(outcome="error", error=str(exc)[:300], ended=_now_iso())
            recorder.fail(call, exc, outcome=Call.Outcome.ERROR)
        return "failed"
    lease = concurrency.acquire(call.model)
    if lease is None:
        # No slot within CONCURRENCY_WAIT: step aside instead of holding the worker. This is
        # not an attempt; the message goes back to the end of the queue.
        enqueue(call.pk, attempt)
        return "waiting"
    try:
        if not _claim(call, attempt, task_id, lease):
            return "stale"
        _active.add(call.pk)
        policy = RetryPolicy(call, rebuilt, attempt, lease)
        try:
            result = gateway.perform(rebuilt, call, retry=policy)
        except OpenAIDjangoError:
            return call.status  # the record is finished (unreachable, timed out...)
        except Exception:
            logger.error("Call %s failed in the gateway", call.pk, exc_info=True)
            return call.status
        return policy.verdict or call.status if result.queued else call.status
    finally:
        lease.release()
        _active.discard(call.pk)


def _now_iso():
    return timezone.now().isoformat()


def _claim(call, attempt, task_id, lease):
    """Take attempt ``attempt`` of a queued call (compare-and-set): writes who holds it, so a
    redelivery can tell a dead holder from a live one."""
    pid = os.getpid()
    entry = {"n": attempt, "task": task_id, "host": HOST, "pid": pid,
             "pst": _own_start(pid), "started": _now_iso()}
    if lease is not None and lease.held:
        entry["leases"] = lease.tokens
    return Call.objects.transition(
        call, {"status": Call.Status.QUEUED, "attempt_count": attempt - 1},
        status=Call.Status.RUNNING, attempt_count=attempt,
        attempts=list(call.attempts or []) + [entry], started_at=timezone.now(),
        task_id=(task_id or "")[:64],
    )


def _error_message(response):
    try:
        body = orjson.loads(response.body)
        return str(body["error"]["message"])[:300]
    except Exception:
        return response.body[:200].decode("utf-8", "replace")


class RetryPolicy:
    """What a background attempt does when it ends, before the gateway finishes the record:
    log it, give the concurrency slot back, and take over an attempt worth another try
    (429, 5xx, a connection error) by queueing the next one after the backoff."""

    def __init__(self, call, invocation, attempt, lease):
        self.call, self.invocation, self.attempt, self.lease = call, invocation, attempt, lease
        self.claimed = time.monotonic()
        self.verdict = None

    def __call__(self, response, error):
        call, attempt = self.call, self.attempt
        entry = call.attempts[-1]
        # Stamped before the slot is given back: attempts' [started, ended] spans lie within
        # their leases, so overlaps counted from the log never exceed the cap.
        entry["ended"] = _now_iso()
        entry["ms"] = round((time.monotonic() - self.claimed) * 1000, 3)
        self.lease.release()
        if response is not None:
            entry["status"] = response.status
            ok = 200 <= response.status < 300
            entry["outcome"] = "ok" if ok else "http_error"
            retryable = response.status in RETRY_STATUSES or response.status >= 500
            if not ok:
                entry["error"] = _error_message(response)
        else:
            timed_out = isinstance(error, UpstreamTimeout)
            entry["outcome"] = ("timeout" if timed_out else
                                "unreachable" if isinstance(error, UpstreamUnavailable)
                                else "error")
            entry["error"] = str(error)[:300]
            retryable = isinstance(error, (UpstreamUnavailable, UpstreamTimeout)) and not (
                timed_out and not _repeatable(call))
        outcome = None
        if retryable:
            delay, reason = retry_plan(attempt, response)
            if delay is not None:
                self._requeue(entry, delay)
                self.verdict = "retry"
                return "retry", None
            entry["gave_up"] = reason
            outcome = Call.Outcome.GAVE_UP
        if (time.monotonic() - self.claimed) > app_settings.STALE_RUNNING_AFTER / 2 and not \
                Call.objects.filter(pk=call.pk, status=Call.Status.RUNNING,
                                    attempt_count=attempt).exists():
            # Ran so long that a sweep declared it lost and moved on: the record belongs to
            # whatever happened next, not to this late answer.
            logger.warning("Call %s attempt %s ended after it was declared lost; answer "
                           "dropped", call.pk, attempt)
            self.verdict = "superseded"
            return "drop", None
        return None, outcome

    def _requeue(self, entry, delay):
        call, attempt = self.call, self.attempt
        entry["retry_in"] = round(delay, 3)
        entry["retry_at"] = (timezone.now() + timedelta(seconds=delay)).isoformat()
        if not Call.objects.transition(call, {"status": Call.Status.RUNNING,
                                              "attempt_count": attempt},
                                       status=Call.Status.QUEUED, attempts=call.attempts):
            return
        logger.info("Call %s attempt %s: %s; retry in %.2fs", call.pk, attempt,
                    entry.get("status") or entry["outcome"], delay)
        try:
            enqueue(call.pk, attempt + 1, countdown=delay)
        except Exception as exc:
            logger.exception("Could not queue the retry of call %s", call.pk)
            recorder.fail(call, QueueUnavailable("The retry of this call could not be "
                                                 "queued."), outcome=Call.Outcome.ERROR)
            raise QueueUnavailable() from exc


def _repeatable(call):
    """Whether an attempt of ``call`` whose fate is unknown may be made again (its kind says:
    not a POST that creates something upstream, since the lost attempt may have)."""
    operation = call.operation_spec
    return operation is None or kinds.of(operation).repeatable(operation)


# -- retries -------------------------------------------------------------------------------


def backoff(attempt):
    """Seconds to wait after failed attempt number ``attempt``: exponential, capped, and with
    "equal jitter" (between half and all of it) so that a burst of failures spreads out."""
    delay = min(app_settings.RETRY_BACKOFF * 2 ** (attempt - 1), app_settings.RETRY_BACKOFF_MAX)
    if app_settings.RETRY_JITTER:
        delay = random.uniform(delay / 2, delay)
    return delay


def retry_after(headers):
    """Seconds the upstream asked to wait (``retry-after-ms``, ``retry-after`` in seconds or
    as an HTTP date), or ``None``."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt_timezone.utc)
    return max(0.0, (when - timezone.now()).total_seconds())


def retry_plan(attempt, response):
    """``(delay, None)`` to retry after ``delay`` seconds, or ``(None, why)`` to give up."""
    limit = app_settings.MAX_ATTEMPTS
    if attempt >= limit:
        return None, f"gave up after {attempt} attempts (OPENAI_DJANGO['MAX_ATTEMPTS'] = {limit})"
    delay = backoff(attempt)
    after = retry_after(response.headers) if response is not None else None
    if after is not None:
        if after > app_settings.RETRY_BACKOFF_MAX:
            return None, (f"the upstream asked to wait {after:g}s (Retry-After), longer than "
                          f"OPENAI_DJANGO['RETRY_BACKOFF_MAX'] = {app_settings.RETRY_BACKOFF_MAX}s")
        delay = max(delay, after)
    return delay, None


# -- recovery ------------------------------------------------------------------------------


def holder_state(call):
    """Whether the process that took the call's current attempt (or, for a sync or stream
    call, the web process serving it) is ``"alive"``, ``"dead"`` or ``"unknown"`` (it ran on
    another host: only time tells, see the sweep)."""
    if call.mode != Call.Mode.ASYNC:
        return process.holder_state(call.holder)
    entry = call.attempts[-1] if call.attempts else None
    if not isinstance(entry, dict) or entry.get("host") != HOST:
        return "unknown"
    pid = entry.get("pid")
    if pid == os.getpid():
        return "alive" if call.pk in _active else "dead"
    return "alive" if _pid_alive(pid, entry.get("pst")) else "dead"


def _recover_lost(call, *, requeue):
    """Deal with an attempt whose holder is gone: queue the next attempt if the operation may
    be repeated and attempts are left (returns its number), else fail the call with outcome
    ``lost`` (returns ``None``). ``requeue`` publishes the next attempt's message; without it
    the caller performs it itself."""
    attempt = call.attempt_count
    entry = call.attempts[-1] if call.attempts else {}
    entry["outcome"] = "lost"
    entry["error"] = "The worker performing this attempt was lost; its outcome is unknown."
    entry["ended"] = _now_iso()
    concurrency.release_tokens(entry.get("leases"))
    expected = {"status": Call.Status.RUNNING, "attempt_count": attempt}
    repeatable = call.mode == Call.Mode.ASYNC and _repeatable(call)
    if repeatable and attempt < app_settings.MAX_ATTEMPTS:
        if not Call.objects.transition(call, expected, status=Call.Status.QUEUED,
                                   attempts=call.attempts):
            return None
        logger.warning("Call %s attempt %s was lost with its worker; attempt %s queued",
                       call.pk, attempt, attempt + 1)
        if requeue:
            enqueue(call.pk, attempt + 1)
        return attempt + 1
    if repeatable:
        entry["gave_up"] = f"gave up after {attempt} attempts (OPENAI_DJANGO['MAX_ATTEMPTS'])"
    else:
        entry["gave_up"] = "not repeated: this operation may have created an object upstream"
    error = CallLost()
    # The claim writes the error and end time with the status, so no reader ever sees a
    # finished call without them (fail() below completes the rest and sends the signal).
    if not Call.objects.transition(call, expected, status=Call.Status.FAILED,
                               outcome=Call.Outcome.LOST, attempts=call.attempts,
                               error=error.body()["error"], finished_at=timezone.now()):
        return None
    logger.warning("Call %s was lost with its worker; marked lost", call.pk)
    recorder.fail(call, error, outcome=Call.Outcome.LOST)
    return None


@shared_task(name="openai_django.sweep_stale_calls", ignore_result=True)
def sweep_stale_calls():
    """Recover calls left ``running`` by dead workers (schedule it with celery beat)."""
    return sweep()


def sweep():
    """Recover every call left ``running`` by a process that is gone: at once when it ran on
    this host and its process is dead, else once it has run longer than
    ``STALE_RUNNING_AFTER``. Background calls are queued again (or marked lost, see
    :func:`_recover_lost`); sync and stream calls, whose client is gone, are marked lost.
    With ``STALE_QUEUED_AFTER`` set, queued calls that many seconds past due are queued
    again too (their message was lost with a worker of the filesystem broker).
    Returns counts.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=app_settings.STALE_RUNNING_AFTER)
    counts = {"requeued": 0, "lost": 0, "requeued_queued": 0}
    # A list, not an iterator: rows are written while we go (and running calls are few).
    for call in list(Call.objects.filter(status=Call.Status.RUNNING).order_by("created")):
        stale = call.started_at is None or call.started_at < cutoff
        if call.mode == Call.Mode.ASYNC:
            if not stale and holder_state(call) != "dead":
                continue
            if _recover_lost(call, requeue=True) is not None:
                counts["requeued"] += 1
            elif call.outcome == Call.Outcome.LOST:
                counts["lost"] += 1
        else:
            # A sync or stream call: its client is gone with the process that served it. The
            # events relayed before the crash were checkpointed; they stay in the record.
            if not stale and holder_state(call) != "dead":
                continue
            error = CallLost("The process serving this call was lost before it finished: "
                             "what the upstream did with it is unknown.")
            if Call.objects.transition(call, {"status": Call.Status.RUNNING},
                                       status=Call.Status.FAILED, outcome=Call.Outcome.LOST,
                                       error=error.body()["error"], finished_at=now):
                recorder.fail(call, error, outcome=Call.Outcome.LOST)
                counts["lost"] += 1
    if app_settings.STALE_QUEUED_AFTER is not None:
        counts["requeued_queued"] = _sweep_queued(now)
    from openai_django import controls

    controls.sweep()  # budget reservations left behind, past rate-limit windows
    if any(counts.values()):
        logger.warning("Sweep of stale calls: %s", counts)
    return counts


def _sweep_queued(now):
    cutoff = now - timedelta(seconds=app_settings.STALE_QUEUED_AFTER)
    count = 0
    queued = Call.objects.filter(status=Call.Status.QUEUED, mode=Call.Mode.ASYNC,
                                 created__lt=cutoff)
    for call in queued.only("id", "created", "attempts", "attempt_count").iterator():
        due = call.created
        last = call.attempts[-1] if call.attempts else None
        if isinstance(last, dict) and last.get("retry_at"):
            due = max(due, datetime.fromisoformat(last["retry_at"]))
        if due < cutoff:
            enqueue(call.pk, call.attempt_count + 1)
            count += 1
    return count


@worker_ready.connect(dispatch_uid="openai_django.sweep_on_worker_ready")
def _sweep_on_worker_ready(sender=None, **kwargs):
    """Each worker that starts sends one sweep, so calls left ``running`` by a worker killed
    on this host are recovered as soon as a worker is back, not ``STALE_RUNNING_AFTER`` later
    (that matters with the filesystem broker, which cannot redeliver)."""
    try:
        sweep_stale_calls.apply_async(**_queue_options())
    except Exception:
        logger.exception("Could not send the start-up sweep")
