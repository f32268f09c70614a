"""The Python API for code inside the host site: ``openai_django.create`` and ``submit``.

Both take an operation of the spec by its ``operationId`` and its parameters as keywords, and
go through the same recording path as the HTTP endpoints (validated against the spec like them,
recorded before the upstream is asked)::

    import openai_django

    result = openai_django.create(
        "createChatCompletion", model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Describe a teapot"}],
        user=request.user, target=product,
    )
    result.data["choices"][0]["message"]["content"]   # or: data, call = result
    result.call                                       # the Call record

    call = openai_django.submit("createImage", prompt="A teapot", user=request.user,
                                target=product, callback="shop.tasks.image_ready")
    call.status                                       # "queued"; a worker performs it

Keywords that name a path parameter (``file_id=``, ``model=`` of ``retrieveModel``...) fill
the path; the rest is the JSON body, the multipart form fields, or the query string of a GET.
Files for multipart operations come as ``files={"image": ...}`` or as the field's own keyword,
each a file object, ``bytes``, a ``pathlib.Path`` or a ``(name, bytes, content_type)`` tuple.
"""

import logging

import orjson

from openai_django import gateway
from openai_django.errors import UpstreamStatusError
from openai_django.invocation import from_kwargs
from openai_django.models import Call
from openai_django.sse import SSEParser

logger = logging.getLogger("openai_django.api")

__all__ = ["AsyncStreamResponse", "Response", "StreamResponse", "acreate", "asubmit",
           "build_invocation", "create", "submit"]

#: An invocation from Python arguments, checked like an HTTP request (see
#: :func:`openai_django.invocation.from_kwargs`).
build_invocation = from_kwargs


class Response:
    """The answer of :func:`create`: the upstream's body and the record of the call.

    ``data`` is the parsed JSON (``None`` for a non-JSON body such as a ``text`` transcript,
    speech audio or a file's content: see ``content`` and ``text``). Unpacks as
    ``data, call = response``.
    """

    def __init__(self, result):
        self.call = result.call
        self.status = result.status
        self.headers = result.headers
        self.content = result.content()
        self.content_type = result.content_type
        self.data = None
        if "json" in self.content_type and self.content:
            self.data = orjson.loads(self.content)

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return self.data

    def __iter__(self):
        return iter((self.data, self.call))

    def __repr__(self):
        return f"<openai_django.Response {self.status} call={self.call.pk}>"


class StreamResponse:
    """The answer of :func:`create` with ``stream=True``: iterate it for the parsed events as
    the upstream sends them (chat chunks, or the Responses API's named events, each with its
    ``type``). The record is finished when the stream ends, or when ``close()`` is called
    (use it as a context manager to never leave a stream open)."""

    def __init__(self, result):
        self.call = result.call
        self.status = result.status
        self.headers = result.headers
        self._relay = result.stream
        self._parser = SSEParser()

    def __iter__(self):
        seen = 0
        for chunk in self._relay:
            self._parser.feed(chunk)
            events = self._parser.events
            while seen < len(events):
                yield orjson.loads(events[seen])
                seen += 1

    def close(self):
        self._relay.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create(operation, /, **kwargs):
    """Perform a call now and return a :class:`Response` (``data``, ``content``, ``call``),
    or a :class:`StreamResponse` when the body asks to ``stream``.

    Keywords: the operation's parameters, plus ``user``, ``api_key`` (an ``APIKey`` or a raw
    key the site issued), ``target`` (any model instance the call is about), ``callback``
    (a task, or its dotted name, sent the call id when the call ends), ``files``,
    ``headers``, ``query``, ``idempotency_key``, and the site's own labels ``call_tags``
    (a list or a comma-separated string), ``call_metadata`` (a flat dict) and
    ``call_session`` (an id grouping a conversation): recorded, never sent upstream
    (:mod:`openai_django.tagging`).

    Raises :class:`~openai_django.errors.UpstreamStatusError` when the upstream answers an
    error status, and the gateway's OpenAI-style errors when it cannot be reached; each
    carries the recorded call as ``.call``.
    """
    result = gateway.run(from_kwargs(operation, **kwargs))
    if result.stream is not None:
        return StreamResponse(result)
    if not 200 <= result.status < 300:
        raise UpstreamStatusError.from_response(result.status, result.content(),
                                                call=result.call)
    return Response(result)


def submit(operation, /, **kwargs):
    """Record a call as ``queued`` and have a Celery worker perform it; returns the
    :class:`~openai_django.models.Call` at once. Same keywords as :func:`create`.

    Inside a transaction the task is sent when it commits. Follow the call with
    ``call.refresh_from_db()``, ``Call.objects.for_object(target)``, the ``call_finished`` /
    ``call_failed`` signals (sent by the worker) or the ``callback`` task.
    """
    return gateway.run(from_kwargs(operation, mode=Call.Mode.ASYNC, **kwargs)).call


class AsyncStreamResponse(StreamResponse):
    """The answer of :func:`acreate` with ``stream=True``: ``async for`` the parsed events as
    the upstream sends them; ``await aclose()`` (or ``async with``) ends it early."""

    def __iter__(self):
        raise TypeError("an async stream: use 'async for'")

    async def __aiter__(self):
        seen = 0
        async for chunk in self._relay:
            self._parser.feed(chunk)
            events = self._parser.events
            while seen < len(events):
                yield orjson.loads(events[seen])
                seen += 1

    async def aclose(self):
        from openai_django.threads import db

        await self._relay._aclose_upstream(Call.Outcome.CLIENT_DISCONNECTED)
        await db(lambda: None)()  # the record's finish ran in the pool: it is done

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if not self._relay.finished:
            await self.aclose()


async def acreate(operation, /, **kwargs):
    """:func:`create` for async code (a site's own async views): the same keywords, the same
    record; the upstream is asked on the event loop and the record is written in the
    database pool, so the loop is never blocked. Returns a :class:`Response`, or an
    :class:`AsyncStreamResponse` when the body asks to ``stream``."""
    from openai_django.threads import db

    invocation = await db(from_kwargs)(operation, **kwargs)
    result = await gateway.arun(invocation)
    if result.stream is not None:
        return AsyncStreamResponse(result)
    if not 200 <= result.status < 300:
        raise UpstreamStatusError.from_response(result.status, await db(result.content)(),
                                                call=result.call)
    return await db(Response)(result)


async def asubmit(operation, /, **kwargs):
    """:func:`submit` for async code: the call is recorded as ``queued`` and a worker performs
    it; returns the :class:`~openai_django.models.Call`."""
    from openai_django.threads import db

    return await db(submit)(operation, **kwargs)
