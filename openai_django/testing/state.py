"""In-memory state of one stand-in process: knobs, queued faults, the request log and the
stores behind files, fine-tunes and models.

Everything lives on the event loop thread, so nothing here needs locks.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque

from .http11 import error_body

# -- ids ---------------------------------------------------------------------------------------

_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Byte -> base62 character (a slight bias towards the first 8 characters is harmless here).
_B62_TABLE = bytes(_ALPHABET[i % 62] for i in range(256))


def new_id(prefix: str, width: int = 24) -> str:
    """``prefix`` + random base62 text, like ``chatcmpl-9xY...`` in the real API."""
    return prefix + os.urandom(width).translate(_B62_TABLE).decode("ascii")


def new_request_id() -> str:
    return "req_" + os.urandom(16).hex()


# -- bounds -------------------------------------------------------------------------------------
# Every size derived from a request is bounded (a fine-tune with ``n_epochs`` near 10**9 once
# made the stand-in build one event per epoch until it was killed).  Values above a bound are
# clamped where the real API would not refuse them, and refused with a 400 where it would.

#: SSE events per stream (``events`` knob, ``X-Standin-Events``).
MAX_EVENTS = 1000
#: ``embedding_dimensions`` knob and the ``dimensions`` field.
MAX_EMBEDDING_DIMENSIONS = 65536
#: Longest ``job_seconds`` (and, in milliseconds, ``ttft_ms``/``gap_ms``).
MAX_SECONDS = 3600.0
#: Epochs simulated (events and checkpoints) for legacy fine-tunes and fine-tuning jobs.
MAX_EPOCHS = 50
#: Events kept per fine-tuning job, and items of any stored list.
MAX_JOB_EVENTS = 200
#: Page size of every list endpoint (``limit``).
MAX_PAGE = 100
#: Requests per batch input file (the real API's limit).
MAX_BATCH_LINES = 50_000
#: Partial images per image stream (the real API's limit).
MAX_PARTIAL_IMAGES = 3
#: Choices per completion (prompts x ``n``).
MAX_CHOICES = 1024
#: Inputs per embeddings request (the real API's limit) and per moderations request.
MAX_EMBEDDING_INPUTS = 2048
#: Floats per embeddings answer (inputs x dimensions), about 80 MB of JSON at most.
MAX_EMBEDDING_VALUES = 1 << 22
#: Reasoning tokens reported for one response.
MAX_REASONING_TOKENS = 4096
#: Objects kept per store (the oldest are dropped first), so a long run stays bounded.
MAX_STORED = 10_000


def clamp_int(value: object, default: int, low: int, high: int) -> int:
    """``value`` as an int within [low, high]; ``default`` when it is not a number."""
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return default
    return max(low, min(n, high))


# -- knobs --------------------------------------------------------------------------------------


class Config:
    """Server-wide defaults, set from the CLI and changed at run time via ``/_control/config``."""

    FIELDS = ("ttft_ms", "gap_ms", "events", "image_base_url", "embedding_dimensions",
              "job_seconds")

    def __init__(self, *, ttft_ms: float = 0.0, gap_ms: float = 0.0, events: int = 8,
                 image_base_url: str | None = None, embedding_dimensions: int = 1536,
                 job_seconds: float = 0.3) -> None:
        self.ttft_ms = float(ttft_ms)
        self.gap_ms = float(gap_ms)
        self.events = min(int(events), MAX_EVENTS)
        self.image_base_url = image_base_url
        self.embedding_dimensions = min(int(embedding_dimensions), MAX_EMBEDDING_DIMENSIONS)
        #: How long batches, fine-tuning jobs, background responses and videos take to finish
        #: (0: at once; the ``fast`` mode sets 0).
        self.job_seconds = float(job_seconds)
        # Where generated image URLs point when ``image_base_url`` is not set: the TLS listener
        # if there is one, else the plain one (filled in once the sockets are bound).
        self.default_image_base_url = ""

    def as_dict(self) -> dict:
        return {"ttft_ms": self.ttft_ms, "gap_ms": self.gap_ms, "events": self.events,
                "image_base_url": self.effective_image_base_url,
                "embedding_dimensions": self.embedding_dimensions,
                "job_seconds": self.job_seconds}

    @property
    def effective_image_base_url(self) -> str:
        return (self.image_base_url or self.default_image_base_url).rstrip("/")

    def update(self, values: dict) -> None:
        """Apply a partial update; raises ``ValueError`` for unknown keys or bad values."""
        unknown = set(values) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = {}
        for key, value in values.items():
            if key in ("ttft_ms", "gap_ms", "job_seconds"):
                value = float(value)
                high = MAX_SECONDS if key == "job_seconds" else MAX_SECONDS * 1000
                if not 0 <= value <= high:
                    raise ValueError(f"{key} must be between 0 and {high:g}")
            elif key in ("events", "embedding_dimensions"):
                value = int(value)
                high = MAX_EVENTS if key == "events" else MAX_EMBEDDING_DIMENSIONS
                if not 1 <= value <= high:
                    raise ValueError(f"{key} must be between 1 and {high}")
            elif key == "image_base_url":
                value = str(value) if value else None
            new[key] = value
        for key, value in new.items():
            setattr(self, key, value)


# -- faults -------------------------------------------------------------------------------------

FAULT_KINDS = ("status", "delay", "reset", "cut", "hang_stream", "no_done", "malformed")

_ERROR_TYPES = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None), 404: ("invalid_request_error", None),
    408: ("timeout", None), 409: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
    502: ("server_error", None), 503: ("server_error", None), 504: ("timeout", None),
}


class Fault:
    """One queued fault (see ``FAULT_KINDS``); ``times`` of -1 means until cleared."""

    def __init__(self, spec: dict) -> None:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        self.kind: str = kind
        self.id = new_id("fault_", 12)
        path = spec.pop("path", None)
        self.path: str | None = path or None
        self.prefix = bool(self.path and self.path.endswith("*"))
        method = spec.pop("method", None)
        self.method: str | None = method.upper() if method else None
        self.times = int(spec.pop("times", 1))
        if self.times == 0 or self.times < -1:
            raise ValueError("times must be a positive count or -1")
        self.status = int(spec.pop("status", 429 if kind == "status" else 200))
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        retry_after = spec.pop("retry_after", None)
        self.retry_after: str | None = None if retry_after is None else str(retry_after)
        self.body = spec.pop("body", None)
        default_seconds = {"delay": 1.0, "hang_stream": 30.0}.get(kind, 0.0)
        self.seconds = float(spec.pop("seconds", default_seconds))
        self.after = int(spec.pop("after", 1))
        self.message: str | None = spec.pop("message", None)
        headers = spec.pop("headers", None) or {}
        self.headers = [(str(k).lower(), str(v)) for k, v in dict(headers).items()]
        if spec:
            raise ValueError(f"unknown fault fields: {sorted(spec)}")
        self.hits = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return True
        if self.prefix:
            return path.startswith(self.path[:-1])
        return path == self.path

    def error_response_body(self) -> bytes:
        if self.body is not None:
            return json.dumps(self.body).encode()
        type_, code = _ERROR_TYPES.get(self.status, ("server_error" if self.status >= 500
                                                      else "invalid_request_error", None))
        message = self.message or (
            "Rate limit reached for requests (injected by the stand-in)." if self.status == 429
            else f"Injected error with status {self.status}.")
        return error_body(message, type_, None, code)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "path": self.path, "method": self.method,
                "times": self.times, "status": self.status, "retry_after": self.retry_after,
                "body": self.body, "seconds": self.seconds, "after": self.after,
                "message": self.message, "headers": dict(self.headers), "hits": self.hits}


class FaultQueue:
    """Faults in the order they were queued; the first one matching a request applies."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def __bool__(self) -> bool:
        return bool(self._faults)

    def add(self, spec: dict) -> Fault:
        fault = Fault(spec)
        self._faults.append(fault)
        return fault

    def clear(self) -> int:
        n = len(self._faults)
        self._faults.clear()
        return n

    def take(self, method: str, path: str) -> Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.matches(method, path):
                fault.hits += 1
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        del self._faults[i]
                return fault
        return None

    def as_list(self) -> list[dict]:
        return [f.as_dict() for f in self._faults]


# -- request log --------------------------------------------------------------------------------

LOGGED_HEADERS = ("authorization", "openai-organization", "openai-project", "openai-beta",
                  "content-type", "content-length", "transfer-encoding", "accept", "user-agent",
                  "idempotency-key", "x-request-id", "x-stainless-retry-count")


def mask_authorization(value: str) -> str:
    """``Bearer sk-abcdef1234`` -> ``Bearer ...1234`` (never keep secrets in the log)."""
    scheme, sep, token = value.partition(" ")
    if not sep:
        scheme, token = "", value
    token = token.strip()
    masked = "..." + token[-4:] if token else ""
    return f"{scheme} {masked}".strip()


class RequestLog:
    """Ring buffer of the last ``size`` requests seen under ``/v1`` (and image downloads)."""

    def __init__(self, size: int = 200) -> None:
        self.entries: deque[dict] = deque(maxlen=max(1, size))

    def append(self, entry: dict) -> None:
        self.entries.append(entry)

    def clear(self) -> None:
        self.entries.clear()

    def last(self, limit: int | None = None) -> list[dict]:
        items = list(self.entries)
        if limit is not None and limit >= 0:
            items = items[-limit:] if limit else []
        return items


# -- files, fine-tunes, models ------------------------------------------------------------------


class FileStore:
    """Uploaded files: metadata (the OpenAIFile object) plus the exact bytes."""

    def __init__(self) -> None:
        self.meta: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> dict:
        file_id = new_id("file-")
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed",
               "status_details": None}
        self.meta[file_id] = obj
        self.data[file_id] = data
        return obj

    def get(self, file_id: str) -> dict | None:
        return self.meta.get(file_id)

    def delete(self, file_id: str) -> bool:
        self.data.pop(file_id, None)
        return self.meta.pop(file_id, None) is not None

    def list(self, purpose: str | None = None) -> list[dict]:
        return [m for m in self.meta.values() if purpose is None or m["purpose"] == purpose]


BASE_MODELS: tuple[tuple[str, str, int], ...] = (
    ("gpt-4o-mini", "system", 1721172741),
    ("gpt-4o", "system", 1715367049),
    ("gpt-4", "openai", 1687882411),
    ("gpt-3.5-turbo", "openai", 1677610602),
    ("gpt-3.5-turbo-instruct", "system", 1692901427),
    ("text-davinci-003", "openai-internal", 1669599635),
    ("text-davinci-edit-001", "openai", 1649809179),
    ("code-davinci-edit-001", "openai", 1649880484),
    ("davinci", "openai", 1649359874),
    ("curie", "openai", 1649359874),
    ("babbage", "openai", 1649358449),
    ("ada", "openai", 1649357491),
    ("whisper-1", "openai-internal", 1677532384),
    ("dall-e-2", "system", 1698798177),
    ("dall-e-3", "system", 1698785189),
    ("text-embedding-ada-002", "openai-internal", 1671217299),
    ("text-embedding-3-small", "system", 1705948997),
    ("text-embedding-3-large", "system", 1705953180),
    ("text-moderation-latest", "openai-internal", 1677610602),
    ("text-moderation-stable", "openai-internal", 1677610602),
    ("omni-moderation-latest", "system", 1731689265),
    ("curie:ft-standin-2023-03-01-00-00-00", "standin-org", 1677628800),
    ("ft:gpt-3.5-turbo-0125:standin::Stand1n0", "standin-org", 1710000000),
)


class ModelStore:
    """The fixed model list plus models produced by fine-tunes; deletions are remembered."""

    def __init__(self) -> None:
        self.models: dict[str, dict] = {}
        for model_id, owner, created in BASE_MODELS:
            self.add(model_id, owner, created)

    def add(self, model_id: str, owner: str = "standin-org",
            created: int | None = None) -> dict:
        obj = {"id": model_id, "object": "model",
               "created": int(time.time()) if created is None else created, "owned_by": owner}
        self.models[model_id] = obj
        return obj

    def get(self, model_id: str) -> dict | None:
        return self.models.get(model_id)

    def delete(self, model_id: str) -> bool:
        return self.models.pop(model_id, None) is not None

    def list(self) -> list[dict]:
        return list(self.models.values())


class FineTuneStore:
    """Legacy ``/v1/fine-tunes`` jobs.  A job runs (and succeeds) while its events are
    streamed with ``?stream=true``; otherwise it stays ``pending`` until cancelled."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}

    def add(self, job: dict) -> dict:
        self.jobs[job["id"]] = job
        return job

    def get(self, job_id: str) -> dict | None:
        return self.jobs.get(job_id)

    def list(self) -> list[dict]:
        return list(self.jobs.values())


def event(message: str, level: str = "info") -> dict:
    return {"object": "fine-tune-event", "created_at": int(time.time()), "level": level,
            "message": message}


# -- today's API: stored objects -----------------------------------------------------------------


class ObjectStore:
    """Objects by id in creation order, with the API's cursor pagination.

    Holds at most ``MAX_STORED`` objects: the oldest go first, so memory stays bounded.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}

    def add(self, obj: dict) -> dict:
        self.items[obj["id"]] = obj
        if len(self.items) > MAX_STORED:
            del self.items[next(iter(self.items))]
        return obj

    def get(self, obj_id: str) -> dict | None:
        return self.items.get(obj_id)

    def pop(self, obj_id: str) -> dict | None:
        return self.items.pop(obj_id, None)

    def values(self) -> list[dict]:
        return list(self.items.values())


def page(items: list[dict], query: dict, *, default_order: str = "desc",
         default_limit: int = 20) -> dict:
    """A cursor page ``{"object": "list", "data", "first_id", "last_id", "has_more"}``:
    ``limit`` (1..``MAX_PAGE``), ``after``/``before`` (ids), ``order`` (``asc``/``desc``)."""
    order = query.get("order") or default_order
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after:
        ids = [i.get("id") for i in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    before = query.get("before")
    if before:
        ids = [i.get("id") for i in ordered]
        ordered = ordered[:ids.index(before)] if before in ids else ordered
    limit = clamp_int(query.get("limit"), default_limit, 1, MAX_PAGE)
    data = ordered[:limit]
    return {"object": "list", "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": len(ordered) > limit}


def progress(record: dict, seconds: float) -> float:
    """How far along a timed record is (0 at the start, 1 when done) after ``seconds`` of
    running: ``record["elapsed"]`` banked plus the time since ``record["since"]`` (None while
    paused).  0 seconds means done at once."""
    elapsed = record["elapsed"]
    if record["since"] is not None:
        elapsed += time.monotonic() - record["since"]
    return float("inf") if seconds <= 0 else elapsed / seconds


class Stores:
    """The stores behind today's API (one object, replaced by ``/_control/reset``)."""

    def __init__(self) -> None:
        self.responses = ObjectStore()
        self.conversations = ObjectStore()
        self.chat = ObjectStore()
        self.uploads = ObjectStore()
        self.batches = ObjectStore()
        self.jobs = ObjectStore()
        self.vector_stores = ObjectStore()
        self.videos = ObjectStore()
        self.containers = ObjectStore()
