"""Spec-shaped answers for the operations that have no dedicated handler.

An operation answers its ``x-oaiMeta`` example response with every id made fresh (the same
example id always maps to the same fresh id within one answer, so ``first_id`` still names
``data[0]``), the caller's path parameters echoed where the example had its own, and
``created_at`` set to now; without a parseable example it answers the minimal body built from
its 200 response schema (:mod:`.specs`).  Operations that answer bytes (video content, skill
archives, thumbnails) answer bytes of that type; ``application/sdp`` answers an SDP text.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from . import fakes
from .http11 import Response, dumps
from .operations import query_params
from .state import new_id

if TYPE_CHECKING:  # pragma: no cover
    from .http11 import Request
    from .specs import SpecOperation

_PREFIX_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z]+)*[-_])")
_ID_KEYS = frozenset(("id", "first_id", "last_id"))
SDP_ANSWER = (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=standin\r\nt=0 0\r\n"
              b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2"
              b"\r\n")


def fresh_id(old: str) -> str:
    """A new random id with the prefix of ``old`` (``batch_abc123`` -> ``batch_9xY...``)."""
    match = _PREFIX_RE.match(old)
    return new_id(match.group(1) if match else "id_")


class _Refresher:
    """Copies an example, renewing ids and echoing the caller's path parameters."""

    def __init__(self, op: SpecOperation, params: dict[str, str]) -> None:
        self.params = params
        # The example's own values of the path parameters -> the caller's.
        self.echo = {v: params[k] for k, v in op.example_params.items() if k in params}
        self.renewed: dict[str, str] = {}

    def value(self, key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.value(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(key, v) for v in value]
        if not isinstance(value, str):
            return value
        if value in self.echo:
            return self.echo[value]
        if key in self.params:
            return self.params[key]
        if key in _ID_KEYS or value in self.renewed:
            if value not in self.renewed:
                self.renewed[value] = fresh_id(value)
            return self.renewed[value]
        return value


def answer(op: SpecOperation, req: Request, **params: str) -> Response:
    """The generic answer of ``op`` for a request with path parameters ``params``."""
    binary = op.binary_type
    if binary is not None:
        if binary == "video/mp4" and query_params(req).get("variant") in ("thumbnail",
                                                                          "spritesheet"):
            binary = "image/webp"
        seed = fakes.digest(op.id, params)
        return Response(op.status, fakes.binary(binary, seed), binary)
    if "application/sdp" in op.response_types:
        return Response(op.status, SDP_ANSWER, "application/sdp")
    body = op.example if op.example is not None else op.minimal
    if body is None:
        return Response(op.status, b"", "")
    refresher = _Refresher(op, params)
    obj = refresher.value("", body)
    if isinstance(obj, dict):
        now = int(time.time())
        for key in ("created_at", "created"):
            if isinstance(obj.get(key), int):
                obj[key] = now
        # ``GET /things/{thing_id}`` (and update, delete): the answer is that thing.
        last = op.path_params[-1] if op.path_params else None
        if last is not None and last.endswith("_id") and op.path.endswith("{" + last + "}") \
                and "id" in obj and last in params:
            obj["id"] = params[last]
    return Response(op.status, dumps(obj), "application/json")
