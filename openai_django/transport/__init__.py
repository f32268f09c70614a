"""Transports to the upstream API beyond the sync :mod:`openai_django.upstream` client.

``from openai_django.transport import get_async_client``; then, in a coroutine,
``response = await get_async_client().send("POST", "/chat/completions", body=..., ...)``:
the sync client's arguments and :class:`~openai_django.upstream.UpstreamResponse`, with an
:class:`~openai_django.transport.aio.AsyncStreamHandle` as ``.raw`` of a stream.
"""

from .aio import (
    AsyncConnectionPool,
    AsyncStreamHandle,
    AsyncUpstreamClient,
    close_async_client,
    get_async_client,
    reset_async_client,
)

__all__ = ["AsyncConnectionPool", "AsyncStreamHandle", "AsyncUpstreamClient",
           "close_async_client", "get_async_client", "reset_async_client"]
