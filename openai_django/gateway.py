"""The one owner of a call's life: record first, send, finish or fail.

HTTP views, the Python API, Celery tasks and admin replays all build an
:class:`~openai_django.invocation.Invocation` and hand it here. :func:`run` answers a caller that
waits (sync or stream) or queues a background call, with the ``Idempotency-Key`` handled once
for all of them; :func:`perform` is one attempt at the upstream with the record finished in
every outcome, which the background task calls with its retry policy. Nobody else sequences
send, finish and fail.
"""

import asyncio
import http.client
import logging
import threading
import time
from contextlib import closing
from dataclasses import dataclass

import orjson
from django.db import IntegrityError, connections

from openai_django import controls, fairness, policy, recorder, threads, upstreams
from openai_django.conf import app_settings
from openai_django.errors import (
    Conflict,
    OpenAIDjangoError,
    Unprocessable,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openai_django.invocation import Invocation  # noqa: F401 (the gateway's input, re-exported)
from openai_django.models import Artifact, Call
from openai_django.sse import SSEParser, encode
from openai_django.upstream import iter_stream

logger = logging.getLogger("openai_django.gateway")

# Response headers the client gets back besides the recorded ones.
PASS_HEADERS = ("content-type", "content-disposition")


@dataclass
class Result:
    """What the caller gets back: the record and the upstream's answer (or the record's copy
    of it, for a repeated ``Idempotency-Key``)."""

    call: Call
    status: int
    headers: dict
    body: bytes = b""
    stream: object = None  # a StreamRelay when the answer is an event stream
    artifact: object = None  # the stored body, when the answer comes from the record
    queued: bool = False  # a background call: the record, not the answer
    replayed: bool = False  # the answer of an earlier call with the same Idempotency-Key

    @property
    def content_type(self):
        return self.headers.get("content-type", "application/json")

    def content(self):
        """The body as bytes (read from storage for a stored one)."""
        if self.artifact is not None:
            from openai_django.storage import open_artifact

            with open_artifact(self.artifact) as handle:
                return handle.read()
        return self.body

    def json(self):
        content = self.content()
        return orjson.loads(content) if content else None


def run(invocation):
    """Answer one invocation: performed now (sync or stream), or queued (background), or, for
    an ``Idempotency-Key`` already used by the same user, the record of that call."""
    begun = begin(invocation)
    if isinstance(begun, Result):
        return begun
    return perform(invocation, begun)


def begin(invocation):
    """Everything before the upstream is asked: the ``Idempotency-Key`` (a :class:`Result`
    from the record when it was used), a background call queued (its :class:`Result`), or
    the record written first: returns the running :class:`Call` to :func:`perform` (or, on
    an event loop, :func:`aperform`)."""
    existing = _idempotent(invocation)
    if existing is not None:
        return existing
    policy.check(invocation)  # the site's pre-call hook (BEFORE_CALL, signals.before_call)
    # Budgets and rate limits (controls.py): a refusal is recorded and raised here.
    admission = controls.admit(invocation)
    try:
        if invocation.mode == Call.Mode.ASYNC:
            from openai_django import tasks

            return Result(controls.attach(tasks.submit_invocation(invocation), admission),
                          202, {}, queued=True)
        return controls.attach(recorder.start(invocation), admission)
    except BaseException as exc:
        controls.release(admission)
        if not isinstance(exc, IntegrityError):
            raise
        # A concurrent request with the same Idempotency-Key won the insert.
        existing = _idempotent(invocation)
        if existing is None:
            raise Conflict("A request with this Idempotency-Key is already in progress.") \
                from exc
        return existing


def _idempotent(invocation):
    """The answer for a repeated ``Idempotency-Key`` of the same user, ``None`` if it is new;
    the same key with another request is a 422, one still being answered a 409."""
    if not invocation.idempotency_key or invocation.operation.method != "POST":
        return None
    existing = (Call.objects.filter(user=invocation.user,
                                    idempotency_key=invocation.idempotency_key)
                .only("id", "status", "request_hash", "mode", "operation", "path",
                      "response_status", "response_body", "response_text",
                      "response_content_type", "response_headers", "stream_events", "outcome",
                      "error", "created", "body_purged_at", "metadata_only")
                .first())
    if existing is None:
        return None
    if existing.request_hash != invocation.request_hash():
        raise Unprocessable("This Idempotency-Key was already used with a different request.",
                            param="Idempotency-Key")
    if existing.mode == Call.Mode.ASYNC:
        return Result(existing, 202, {}, queued=True, replayed=True)
    if not existing.is_finished:
        raise Conflict("A request with this Idempotency-Key is still in progress.",
                       code="idempotency_in_progress", call=existing)
    return recorded(existing)


def recorded(call):
    """The upstream's answer as it was returned, from the record (raises
    :class:`~openai_django.errors.NotFound` when the record no longer keeps it)."""
    from openai_django.errors import NotFound
    from openai_django.kinds import of_call

    status = call.response_status or 200
    content_type = call.response_content_type or "application/json"
    headers = {"content-type": content_type, "x-call-id": str(call.pk)}
    result = Result(call, status, headers, replayed=True)
    artifact = (call.artifacts.filter(role__in=[Artifact.Role.RESPONSE,
                                                Artifact.Role.FILE_CONTENT,
                                                Artifact.Role.GENERATED_AUDIO])
                .exclude(file="").filter(purged_at__isnull=True).first())
    if artifact is not None and not call.stream:
        result.artifact = artifact
    elif call.stream_events is not None:
        kind = of_call(call)
        result.body = encode(call.stream_events, named=kind.stream_format == "events",
                             done=call.outcome == Call.Outcome.OK)
        headers["content-type"] = "text/event-stream"
    elif call.response_body is not None:
        result.body = orjson.dumps(call.response_body)
    elif call.response_text:
        result.body = call.response_text.encode()
    elif call.error is not None:
        result.body = orjson.dumps({"error": call.error})
        headers["content-type"] = "application/json"
    elif call.body_purged_at or call.metadata_only:
        raise NotFound("The response body of this call is not kept (metadata only or purged).",
                       code="body_not_kept", call=call)
    return result


# -- one attempt ---------------------------------------------------------------------------


def _request(invocation):
    """``(args, kwargs)`` of the upstream client's ``send`` for an invocation (the sync and
    the async client take the same)."""
    op = invocation.operation
    body, content_type = invocation.upstream_body()
    return (op.method, op.upstream_path(invocation.path_kwargs)), {
        "query": invocation.query, "body": body, "content_type": content_type,
        "headers": {k: v for k, v in invocation.headers.items()
                    if k in app_settings.FORWARD_HEADERS},
        "stream": invocation.stream, "admin": op.admin,
    }


def send(invocation):
    """Ask the upstream the call is routed to, falling back along its route (raises
    ``UpstreamUnavailable``/``UpstreamTimeout``); openai_django/upstreams.py."""
    with fairness.outside():  # the wait for the upstream leaves the turn to others
        return upstreams.send(invocation, _request)


def perform(invocation, call=None, *, retry=None):
    """One attempt at the upstream, the record finished in every outcome; returns a
    :class:`Result` (its stream still to be relayed for a stream call).

    The record is written first unless ``call`` (a queued record, claimed) is given.
    ``retry(response, error)`` (background calls) may take over an attempt that failed:
    it returns ``("retry", None)`` when it queued the next attempt, ``("drop", None)`` when
    the record is no longer this attempt's to write, or ``(None, outcome)`` to finish the call
    here with that outcome (``None``: as the answer says). Gateway-side failures raise an
    :class:`OpenAIDjangoError` carrying the call.
    """
    if call is None:
        call = recorder.start(invocation)
    call.kind = invocation.kind
    try:
        response, error = send(invocation), None
    except Exception as exc:
        response, error = None, exc
    upstreams.note(call, response if error is None else error)
    outcome = None
    if retry is not None:
        verdict, outcome = retry(response, error)
        if verdict is not None:
            return Result(call, 0, {}, queued=True)
    if error is not None:
        recorder.fail(call, error, started=invocation.started, outcome=outcome)
        if isinstance(error, OpenAIDjangoError):
            error.call = call
        raise error
    if response.raw is not None:
        relay = StreamRelay(call, response, invocation.started)
        return Result(call, response.status, _client_headers(response, call), stream=relay)
    return settle(call, invocation, response, outcome)


def settle(call, invocation, response, outcome=None):
    """Finish the record of a whole answer and return the caller's :class:`Result` (the
    last step of :func:`perform` and :func:`aperform`)."""
    try:
        recorder.finish(call, response, started=invocation.started, outcome=outcome)
    except Exception as exc:
        logger.exception("Could not finish the record of call %s", call.pk)
        recorder.fail(call, exc, started=invocation.started, outcome=Call.Outcome.ERROR)
    if call.outcome == Call.Outcome.BAD_RESPONSE:
        raise UpstreamBadResponse(call=call)
    return Result(call, response.status, _client_headers(response, call), body=response.body)


def _client_headers(response, call):
    keep = set(app_settings.RECORD_RESPONSE_HEADERS) | set(PASS_HEADERS)
    headers = {k: v for k, v in response.headers.items() if k in keep}
    headers["x-call-id"] = str(call.pk)
    headers.update(controls.headers_of(call))  # the gateway's own x-ratelimit-* headers
    return headers


class Checkpointer:
    """Saves the events of every open stream of this process every
    ``STREAM_CHECKPOINT_SECONDS``, from one thread of its own.

    A process killed mid-stream then loses at most one interval of what its clients were
    sent, whatever the upstream does: a checkpoint taken only when an event arrives would
    leave unsaved the events relayed just before the upstream pauses (a model thinking, a
    tool running). The relays never wait on these writes.
    """

    def __init__(self):
        self._relays = {}  # relay -> seconds between its checkpoints
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    def watch(self, relay, every):
        with self._lock:
            self._relays[relay] = every
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="openai-django-checkpoints")
                self._thread.start()

    def forget(self, relay):
        with self._lock:
            self._relays.pop(relay, None)

    def _run(self):
        due = {}
        while True:
            with self._lock:
                relays = list(self._relays.items())
            if not relays:
                with self._lock:
                    if not self._relays:
                        self._thread = None
                        break
                continue
            now = time.monotonic()
            # A write budget: with more open streams than the budget saves in one interval,
            # each is saved less often (the process's checkpoint writes per second bounded).
            budget = app_settings.STREAM_CHECKPOINT_BUDGET
            stretched = len(relays) / budget if budget else 0
            saved = False
            for relay, every in relays:
                every = max(every, stretched)
                when = due.setdefault(relay, now + every)
                if now >= when:
                    due[relay] = now + every
                    relay.checkpoint()
                    saved = True
            if saved:  # a pooled connection (OPTIONS["pool"]) is not held between ticks
                threads.release_pooled()
            open_now = {relay for relay, _ in relays}  # once, not once per relay (10k: 10^8)
            for relay in [r for r in due if r not in open_now]:
                del due[relay]
            tick = min(every for _, every in relays) / 4
            self._wake.wait(max(0.01, min(tick, 0.5)))
        # No stream left: the thread ends, and its database connection with it.
        connections.close_all()


#: The process's one :class:`Checkpointer`.
checkpointer = Checkpointer()


class StreamRelay:
    """Relays an upstream event stream to the client chunk by chunk, keeping the events.

    Iterating yields the upstream's bytes as they arrive. The record is finished exactly once:
    at the stream's end (``[DONE]``, or the kind's last named event), when the upstream ends
    or breaks, or when the client goes away (the server closes the iterator, or ``close()`` is
    called before iteration began).
    """

    def __init__(self, call, response, started):
        self.call = call
        self.response = response
        self.started = started
        self.parser = SSEParser()
        self.finished = False
        self._generator = None
        self._saved = 0  # events saved by the last checkpoint
        every = app_settings.STREAM_CHECKPOINT_SECONDS
        if every is not None and not getattr(call, "unrecorded", False):
            checkpointer.watch(self, every)

    def checkpoint(self):
        """Save what was relayed so far, if anything is new (one conditional UPDATE; called by
        the :data:`checkpointer`, never in the relay's own time)."""
        if self.finished:
            return
        events = self.parser.events[:]
        if len(events) == self._saved:
            return
        self._saved = len(events)
        try:
            recorder.checkpoint(self.call, events)
        except Exception:
            logger.exception("Could not checkpoint the events of stream call %s", self.call.pk)

    def __iter__(self):
        self._generator = self._relay()
        return self._generator

    def _complete(self):
        """Whether the stream already ended well: ``[DONE]``, or its family's last named
        event (a client may hang up right after it: it had the whole answer)."""
        if self.parser.done:
            return True
        kind = getattr(self.call, "kind", None)
        return kind is not None and kind.stream_format == "events" and kind.stream_done(
            self.parser.events, False)

    def _finish(self, outcome=None, exc=None):
        if self.finished:
            return
        self.finished = True
        checkpointer.forget(self)
        self.parser.close()
        if outcome == Call.Outcome.CLIENT_DISCONNECTED and self._complete():
            outcome = Call.Outcome.OK
        response = self.response
        response.elapsed_ms = (time.perf_counter() - self.started) * 1000
        events = self.parser.events
        try:
            if exc is not None or outcome not in (None, Call.Outcome.OK):
                recorder.fail(self.call, exc, started=self.started, outcome=outcome,
                              response=response, events=events, stream_done=self.parser.done)
            else:
                recorder.finish(self.call, response, started=self.started, events=events,
                                stream_done=self.parser.done)
        except Exception:
            logger.exception("Could not finish the record of stream call %s", self.call.pk)

    def _relay(self):
        raw = self.response.raw
        try:
            with closing(iter_stream(raw)) as chunks:
                for chunk in chunks:
                    self.parser.feed(chunk)
                    yield chunk
        except GeneratorExit:
            self._finish(Call.Outcome.CLIENT_DISCONNECTED)
            raise
        except (http.client.HTTPException, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            error = (UpstreamTimeout("The upstream API stopped sending its stream.")
                     if timed_out else
                     UpstreamUnavailable(f"The upstream API broke off its stream: {exc}"))
            self._finish(Call.Outcome.TIMEOUT if timed_out else Call.Outcome.STREAM_BROKEN,
                         error)
            # Tell the client in-band: it already has a 200 and cannot get another status.
            yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
            return
        self._finish(Call.Outcome.OK)

    def close(self):
        """Called by Django when the response is closed; finishes the record if the relay did
        not (the client went away before or during the stream)."""
        if self._generator is not None:
            self._generator.close()
        if not self.finished:
            raw = self.response.raw
            raw.close()
            raw.release_conn()
            self._finish(Call.Outcome.CLIENT_DISCONNECTED)


# -- the async transport (ASGI) ------------------------------------------------------------
#
# The same life, on an event loop: the upstream is asked with the async client, and every
# step of the record runs in the database pool (openai_django/threads.py), so a process holds
# thousands of streams with a bounded number of threads and connections.


async def asend(invocation):
    """:func:`send` with the async client."""
    return await upstreams.asend(invocation, _request)


async def arun(invocation):
    """:func:`run` on an event loop."""
    from openai_django.threads import db

    begun = await db(begin)(invocation)
    if isinstance(begun, Result):
        return begun
    return await aperform(invocation, begun)


async def aperform(invocation, call):
    """:func:`perform` on an event loop: one attempt, the record finished in every
    outcome."""
    from openai_django.threads import db

    call.kind = invocation.kind
    try:
        response = await asend(invocation)
        upstreams.note(call, response)
    except asyncio.CancelledError:
        # The client hung up while the upstream was still to answer: the request to it is
        # closed with the cancelled read, and the record says so.
        await asyncio.shield(db(recorder.fail)(
            call, None, started=invocation.started, outcome=Call.Outcome.CLIENT_DISCONNECTED))
        raise
    except Exception as exc:
        upstreams.note(call, exc)
        await db(recorder.fail)(call, exc, started=invocation.started)
        if isinstance(exc, OpenAIDjangoError):
            exc.call = call
        raise
    if response.raw is not None:
        relay = AsyncStreamRelay(call, response, invocation.started)
        return Result(call, response.status, _client_headers(response, call), stream=relay)
    return await asyncio.shield(db(settle)(call, invocation, response))


async def abegin(begin_in_pool):
    """Run the first steps of a call (``begin_in_pool``, a sync callable that records it)
    in the database pool, and see it through if the client hangs up meanwhile: the pool's
    thread finishes the record's start anyway, so a cancelled caller waits for it and
    finishes the call as ``client_disconnected`` (nothing was sent upstream)."""
    from openai_django.threads import db

    task = asyncio.ensure_future(db(begin_in_pool)())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        begun = await _settled(task)
        if isinstance(begun, tuple):  # (invocation, call): recorded, never sent
            await db(recorder.fail)(begun[1], None, outcome=Call.Outcome.CLIENT_DISCONNECTED,
                                    started=begun[0].started)
        raise


async def _settled(task):
    try:
        return await task
    except Exception:
        return None


class AsyncStreamRelay(StreamRelay):
    """:class:`StreamRelay` on an event loop: ``async for`` yields the upstream's bytes as
    they arrive. A client that hangs up cancels the relay (Django's ASGI handler listens for
    ``http.disconnect``): the upstream request is closed at once and the call finished as
    ``client_disconnected``, without waiting for the upstream's next event."""

    __iter__ = None  # Django tries iter() first: this relay is async only

    #: Seconds Django may take to start relaying the stream it was given. A client that
    #: hangs up between the view's return and the first read cancels the request without
    #: Django ever iterating or closing the response: this bounds how long the upstream
    #: request stays open and the call ``running`` then.
    START_WITHIN = 10.0

    def __init__(self, call, response, started):
        super().__init__(call, response, started)
        self._loop = asyncio.get_running_loop()
        self._watchdog = self._loop.call_later(self.START_WITHIN, self._unclaimed)

    def _unclaimed(self):
        if self._generator is None and not self.finished:
            logger.info("Stream of call %s was never relayed (client gone)", self.call.pk)
            self._loop.create_task(self._aclose_upstream(Call.Outcome.CLIENT_DISCONNECTED))

    def __aiter__(self):
        self._watchdog.cancel()
        self._generator = self._arelay()
        return self._generator

    async def _arelay(self):
        from openai_django.threads import db

        raw = self.response.raw
        try:
            async for chunk in raw:
                self.parser.feed(chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            await asyncio.shield(self._aclose_upstream(Call.Outcome.CLIENT_DISCONNECTED))
            raise
        except (UpstreamTimeout, UpstreamUnavailable, OSError) as exc:
            timed_out = isinstance(exc, (UpstreamTimeout, TimeoutError))
            error = (UpstreamTimeout("The upstream API stopped sending its stream.")
                     if timed_out else
                     UpstreamUnavailable(f"The upstream API broke off its stream: {exc}"))
            await raw.aclose()
            await db(self._finish)(
                Call.Outcome.TIMEOUT if timed_out else Call.Outcome.STREAM_BROKEN, error)
            yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
            return
        await db(self._finish)(Call.Outcome.OK)

    async def _aclose_upstream(self, outcome):
        from openai_django.threads import db

        await self.response.raw.aclose()
        if not self.finished:
            await db(self._finish)(outcome)

    def close(self):
        """Called by Django (in a thread) when the response is closed: finishes the record
        if the relay did not (it never started, or was dropped)."""
        if self.finished:
            return
        self._watchdog.cancel()
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.response.raw.aclose(), self._loop)
        self._finish(Call.Outcome.CLIENT_DISCONNECTED)
