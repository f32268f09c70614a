"""The stand-in application: routing, auth, fault injection, the control API, generated image
files, response headers and the SSE stream writer.

``StandinApp.handle`` is called by :mod:`.http11` for every request.  The common path (a JSON
request answered with JSON) stays synchronous end to end; streams and injected delays return
an ``async`` callable that the protocol runs as a task.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from . import fakes, generic, specs
from .http11 import Request, Response, dumps, error_body, loads
from .jobs import JobOps
from .media import MediaOps
from .operations import ApiError, Operations, StreamPlan, form_data, query_params
from .resources import ResourceOps
from .responses import ResponsesOps
from .specs import SpecOperation
from .state import (
    LOGGED_HEADERS,
    MAX_EVENTS,
    MAX_SECONDS,
    Config,
    Fault,
    FaultQueue,
    FileStore,
    FineTuneStore,
    ModelStore,
    RequestLog,
    Stores,
    clamp_int,
    mask_authorization,
    new_request_id,
)

log = logging.getLogger("openai_django.testing.app")

API_PREFIX = "/v1"
CONTROL_PREFIX = "/_control/"
IMAGE_RE = re.compile(r"^/images/img-([0-9a-f]{6})-(\d{1,4})x(\d{1,4})-[0-9a-f]+\.png$")
MALFORMED_BODY = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"ind'

MAX_MS = MAX_SECONDS * 1000
RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 2_000_000

Route = tuple[Callable[..., Any], dict[str, str]]


class Router:
    """The route table of both specs: every (method, path) of ``openapi.yaml`` and
    ``openapi-2.3.0.yaml`` (:mod:`.specs`), answered by the handler named after its
    ``operationId`` when one of ``handlers`` has it, else by the generic spec-shaped answer.

    Paths without parameters are one dict lookup (the hot 2023 paths: chat, completions,
    embeddings); parameterised ones are bucketed by segment count and first segment, so a
    lookup tries a handful of patterns, most specific first.
    """

    def __init__(self, handlers: list[Any], operations: list[SpecOperation] | None = None) -> None:
        self.static: dict[str, dict[str, Callable[..., Any]]] = {}
        self.dynamic: dict[tuple[int, str], list[tuple[int, re.Pattern, dict]]] = {}
        self.operations: dict[tuple[str, str], SpecOperation] = {}
        chosen: dict[tuple[str, str], tuple[SpecOperation, Callable[..., Any] | None]] = {}
        for op in operations if operations is not None else specs.load_operations():
            key = (op.method, op.path)
            previous = chosen.get(key)
            if op.query_match and previous is not None:
                continue  # ``/responses?beta=true``: the same route as ``/responses``
            handler = self._dedicated(handlers, op.id)
            if handler is None and previous is not None and previous[1] is not None:
                continue  # an older spec's dedicated handler beats a newer generic answer
            chosen[key] = (op, handler)
        patterns: dict[str, dict[str, Callable[..., Any]]] = {}
        for (method, path), (op, handler) in chosen.items():
            self.operations[(method, path)] = op
            if handler is None:
                handler = functools.partial(generic.answer, op)
            full = API_PREFIX + path
            if "{" in path:
                patterns.setdefault(full, {})[method] = handler
            else:
                self.static.setdefault(full, {})[method] = handler
        for full, methods in patterns.items():
            segments = full.split("/")
            regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", full) + "$")
            literals = sum(1 for seg in segments if "{" not in seg)
            bucket = self.dynamic.setdefault((len(segments), segments[2]), [])
            bucket.append((literals, regex, methods))
        for bucket in self.dynamic.values():
            bucket.sort(key=lambda entry: -entry[0])

    @staticmethod
    def _dedicated(handlers: list[Any], op_id: str) -> Callable[..., Any] | None:
        for name in (op_id, op_id.removeprefix("beta_")):
            for obj in handlers:
                handler = getattr(obj, name, None)
                if handler is not None:
                    return handler
        return None

    def resolve(self, method: str, path: str) -> Route | None:
        if method == "HEAD":
            method = "GET"
        methods = self.static.get(path)
        if methods is not None:
            handler = methods.get(method)
            if handler is not None:
                return handler, {}
        segments = path.split("/")
        if len(segments) < 3:
            return None
        for _, regex, candidate in self.dynamic.get((len(segments), segments[2]), ()):
            handler = candidate.get(method)
            if handler is None:
                continue
            match = regex.match(path)
            if match:
                return handler, {k: unquote(v) for k, v in match.groupdict().items()}
        return None


def _error(status: int, message: str, type_: str = "invalid_request_error",
           param: str | None = None, code: str | None = None) -> Response:
    return Response(status, error_body(message, type_, param, code))


class StandinApp:
    """All behaviour of one stand-in process (see the package docstring for the contract)."""

    def __init__(self, *, api_key: str | None = None, fast: bool = False,
                 config: Config | None = None, log_size: int = 200) -> None:
        self.api_key = api_key or None
        self.fast = fast
        self._pacer: Any = None  # the streams' one timer (.pacer), made on first use
        self.config = config or Config()
        self._initial_config = self.config.as_dict()
        self._initial_config["image_base_url"] = self.config.image_base_url
        self.faults = FaultQueue()
        self.log = RequestLog(log_size)
        self.files = FileStore()
        self.fine_tunes = FineTuneStore()
        self.models = ModelStore()
        self.stores = Stores()
        self.ops = Operations(self)
        # Handlers named after operationIds; the first that has one serves it.
        self.router = Router([ResponsesOps(self), MediaOps(self), JobOps(self),
                              ResourceOps(self), self.ops])
        self._rl_window = 0
        self._rl_count = 0

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, req: Request) -> Any:
        path = req.path
        if path.startswith("/v1/"):
            return self._api(req)
        if path.startswith(CONTROL_PREFIX):
            return self._control(req)
        if path.startswith("/images/"):
            # Logged too, so tests can tell whether a client downloaded a generated image.
            entry = None if self.fast else self._log_entry(req)
            resp = self._image_file(req)
            if entry is not None:
                entry["status"] = resp.status
            return resp
        return _error(404, f"Invalid URL ({req.method} {path})")

    # -- /v1 -------------------------------------------------------------------------------------

    def _api(self, req: Request) -> Any:
        entry = None if self.fast else self._log_entry(req)
        route = self.router.resolve(req.method, req.path)
        if route is None:
            return self._finish(req, _error(404, f"Invalid URL ({req.method} {req.path})"),
                                entry)
        denied = self._check_auth(req)
        if denied is not None:
            return self._finish(req, denied, entry)
        fault = self.faults.take(req.method, req.path) if self.faults else None
        handler, params = route
        if fault is None:
            return self._run(req, handler, params, entry, None)
        return self._apply_fault(req, fault, handler, params, entry)

    def _check_auth(self, req: Request) -> Response | None:
        value = req.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _error(401, "You didn't provide an API key. You need to provide your API key "
                               "in an Authorization header using Bearer auth (i.e. "
                               "Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if self.api_key is not None and token != self.api_key:
            masked = (token[:3] + "*" * 8 + token[-4:]) if len(token) > 8 else "*" * len(token)
            return _error(401, f"Incorrect API key provided: {masked}.",
                          code="invalid_api_key")
        return None

    def _run(self, req: Request, handler: Callable[..., Any], params: dict[str, str],
             entry: dict | None, fault: Fault | None) -> Any:
        try:
            result = handler(req, **params)
        except ApiError as exc:
            return self._finish(req, _error(exc.status, exc.message, exc.type, exc.param,
                                            exc.code), entry)
        if isinstance(result, StreamPlan):
            plan = result
            return lambda conn: self._stream(conn, req, plan, fault, entry)
        return self._finish(req, result, entry)

    def _finish(self, req: Request, resp: Response, entry: dict | None) -> Response:
        resp.headers.extend(self._headers(req, entry))
        if entry is not None:
            entry["status"] = resp.status
        return resp

    def _headers(self, req: Request, entry: dict | None) -> list[tuple[str, str]]:
        """The headers every real API answer carries (request id, timing, rate limits)."""
        now = time.time()
        window = int(now // 60)
        if window != self._rl_window:
            self._rl_window = window
            self._rl_count = 0
        self._rl_count += 1
        remaining = max(0, RATE_LIMIT_REQUESTS - self._rl_count)
        reset = f"{60 - now % 60:.3f}s"
        request_id = new_request_id()
        if entry is not None:
            entry["request_id"] = request_id
        ms = int((time.perf_counter() - req.received_at) * 1000)
        return [
            ("openai-version", "2020-10-01"),
            ("openai-organization", req.headers.get("openai-organization", "user-standin")),
            ("openai-processing-ms", str(ms)),
            ("x-request-id", request_id),
            ("x-ratelimit-limit-requests", str(RATE_LIMIT_REQUESTS)),
            ("x-ratelimit-remaining-requests", str(remaining)),
            ("x-ratelimit-reset-requests", reset),
            ("x-ratelimit-limit-tokens", str(RATE_LIMIT_TOKENS)),
            ("x-ratelimit-remaining-tokens", str(RATE_LIMIT_TOKENS - 1000)),
            ("x-ratelimit-reset-tokens", "30ms"),
        ]

    def knobs(self, req: Request) -> tuple[int, float, float]:
        """(events, ttft seconds, gap seconds): server defaults, overridable per request with
        ``X-Standin-Events`` / ``X-Standin-Ttft-Ms`` / ``X-Standin-Gap-Ms`` headers."""
        cfg = self.config
        events, ttft, gap = cfg.events, cfg.ttft_ms, cfg.gap_ms
        headers = req.headers
        if "x-standin-events" in headers or "x-standin-ttft-ms" in headers \
                or "x-standin-gap-ms" in headers:
            try:
                events = clamp_int(headers.get("x-standin-events", events), events, 1,
                                   MAX_EVENTS)
                ttft = min(max(0.0, float(headers.get("x-standin-ttft-ms", ttft))), MAX_MS)
                gap = min(max(0.0, float(headers.get("x-standin-gap-ms", gap))), MAX_MS)
            except ValueError:
                pass
        return events, ttft / 1000.0, gap / 1000.0

    # -- streaming -------------------------------------------------------------------------------

    async def _stream(self, conn: Any, req: Request, plan: StreamPlan, fault: Fault | None,
                      entry: dict | None) -> None:
        """Write an SSE stream, each event flushed on its own, honouring stream faults."""
        headers = self._headers(req, entry)
        if plan.model:
            headers.append(("openai-model", plan.model))
        headers.append(("cache-control", "no-cache"))
        if entry is not None:
            entry["status"] = 200
            entry["stream"] = True
        conn.start_stream(200, "text/event-stream; charset=utf-8", headers)
        kind = fault.kind if fault is not None else None
        after = fault.after if kind in ("cut", "hang_stream") else -1
        sleep = asyncio.sleep
        sent = 0
        named = plan.named
        events = plan.events
        if named and kind == "no_done":
            events = list(events)[:-1]  # no terminal event (``response.completed``)
        if kind is None and (plan.ttft > 0 or plan.gap > 0):
            # Paced, no fault: one timer for every stream (.pacer), not a sleep per event.
            pacer = self._pacer
            if pacer is None:
                from .pacer import Pacer

                pacer = self._pacer = Pacer(asyncio.get_running_loop())
            if named:
                chunks = (b"event: " + p[0] + b"\ndata: " + p[1] + b"\n\n" for p in events)
            else:
                chunks = (b"data: " + p + b"\n\n" for p in events)
            if not await pacer.run(conn, chunks, plan.ttft, plan.gap) or conn.closed:
                return
            if plan.done_marker:
                conn.send_chunk(b"data: [DONE]\n\n")
            conn.end_stream()
            return
        for payload in events:
            if sent == after:
                if kind == "cut":
                    conn.close()
                    return
                await sleep(fault.seconds)  # type: ignore[union-attr]
            delay = plan.ttft if sent == 0 else plan.gap
            if delay > 0:
                await sleep(delay)
            if conn.closed:
                return
            if named:
                conn.send_chunk(b"event: " + payload[0] + b"\ndata: " + payload[1] + b"\n\n")
            else:
                conn.send_chunk(b"data: " + payload + b"\n\n")
            sent += 1
            if conn.write_paused:
                await conn.drain()
        if 0 <= after and sent <= after:  # fewer events than ``after``: fault at the end
            if kind == "cut":
                conn.close()
                return
            await sleep(fault.seconds)  # type: ignore[union-attr]
        if conn.closed:
            return
        if plan.done_marker and kind != "no_done":
            conn.send_chunk(b"data: [DONE]\n\n")
        conn.end_stream()
        return

    # -- faults ----------------------------------------------------------------------------------

    def _apply_fault(self, req: Request, fault: Fault, handler: Callable[..., Any],
                     params: dict[str, str], entry: dict | None) -> Any:
        kind = fault.kind
        log.info("fault %s (%s) on %s %s", fault.id, kind, req.method, req.path)
        if entry is not None:
            entry["fault"] = kind
        if kind == "status":
            headers = list(fault.headers)
            if fault.retry_after is not None:
                headers.append(("retry-after", fault.retry_after))
            return self._finish(req, Response(fault.status, fault.error_response_body(),
                                              "application/json", headers), entry)
        if kind == "malformed":
            return self._finish(req, Response(200, MALFORMED_BODY, "application/json",
                                              list(fault.headers)), entry)
        if kind == "reset":
            async def reset(conn: Any) -> None:
                conn.reset()
            return reset
        if kind == "delay":
            async def delayed(conn: Any) -> Response | None:
                await asyncio.sleep(fault.seconds)
                result = self._run(req, handler, params, entry, None)
                if isinstance(result, Response):
                    return result
                return await result(conn)
            return delayed
        # cut / hang_stream / no_done: shape the (normal) answer.
        result = self._run(req, handler, params, entry, fault)
        if not isinstance(result, Response) or kind == "no_done" or result.status >= 400:
            return result
        if kind == "hang_stream":
            async def hung(conn: Any) -> Response:
                await asyncio.sleep(fault.seconds)
                return result
            return hung

        async def cut(conn: Any) -> None:
            body = result.body
            conn.write_raw(conn.head_bytes(result.status, result.content_type, result.headers,
                                           len(body)) + body[:len(body) // 2])
            conn.close()
        return cut

    # -- request log -----------------------------------------------------------------------------

    def _log_entry(self, req: Request) -> dict:
        headers = {}
        for name in LOGGED_HEADERS:
            value = req.headers.get(name)
            if value is not None:
                headers[name] = mask_authorization(value) if name == "authorization" else value
        entry: dict[str, Any] = {"time": time.time(), "method": req.method, "path": req.path,
                                 "query": query_params(req), "headers": headers, "body": None,
                                 # Every header's name (values only of the logged ones), so
                                 # a test can check what was never forwarded.
                                 "header_names": sorted(req.headers)}
        body = req.body
        if body:
            entry["body_bytes"] = len(body)
            ctype = req.headers.get("content-type", "").lower()
            if ctype.startswith("multipart/form-data"):
                try:
                    fields, files = form_data(req)
                    entry["form"] = fields
                    entry["files"] = [f.describe() for f in files]
                except ApiError:
                    entry["body_error"] = "invalid multipart body"
            else:
                try:
                    entry["body"] = req.cache["json"] = loads(body)
                except ValueError:
                    entry["body_error"] = "not JSON"
                    entry["body_sha256"] = hashlib.sha256(body).hexdigest()
                    entry["body_text"] = body[:2048].decode("utf-8", "replace")
        self.log.append(entry)
        return entry

    # -- control API -----------------------------------------------------------------------------

    def _control(self, req: Request) -> Response:
        name = req.path[len(CONTROL_PREFIX):].strip("/")
        method = req.method
        try:
            if name == "health" and method in ("GET", "HEAD"):
                return Response(200, dumps({"status": "ok", "fast": self.fast}))
            if name == "faults":
                if method == "GET":
                    return Response(200, dumps(self.faults.as_list()))
                if method == "POST":
                    spec = self._control_body(req)
                    specs = spec if isinstance(spec, list) else [spec]
                    added = [self.faults.add(s).as_dict() for s in specs]
                    return Response(200, dumps(added if isinstance(spec, list) else added[0]))
                if method == "DELETE":
                    return Response(200, dumps({"cleared": self.faults.clear()}))
            if name == "config":
                if method == "POST":
                    self.config.update(self._control_body(req))
                if method in ("GET", "POST"):
                    return Response(200, dumps(self.config.as_dict()))
            if name == "requests":
                if method == "GET":
                    limit = query_params(req).get("limit")
                    return Response(200, dumps(self.log.last(int(limit) if limit else None)))
                if method == "DELETE":
                    self.log.clear()
                    return Response(200, dumps({"cleared": True}))
            if name == "goaway" and method == "POST":
                from .http2 import goaway_all

                return Response(200, dumps({"connections": goaway_all()}))
            if name == "reset" and method == "POST":
                self.faults.clear()
                self.log.clear()
                self.files = FileStore()
                self.fine_tunes = FineTuneStore()
                self.models = ModelStore()
                self.stores = Stores()
                self.config.update(self._initial_config)
                return Response(200, dumps({"reset": True}))
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _error(404, f"Invalid URL ({method} {req.path})")

    @staticmethod
    def _control_body(req: Request) -> Any:
        try:
            value = loads(req.body) if req.body else {}
        except ValueError:
            raise ValueError("control body must be JSON") from None
        if not isinstance(value, (dict, list)):
            raise TypeError("control body must be a JSON object")
        return value

    # -- generated images ------------------------------------------------------------------------

    def _image_file(self, req: Request) -> Response:
        match = IMAGE_RE.match(req.path)
        if match is None or req.method not in ("GET", "HEAD"):
            return _error(404, f"Invalid URL ({req.method} {req.path})")
        rgb = bytes.fromhex(match.group(1))
        width = max(1, min(int(match.group(2)), 2048))
        height = max(1, min(int(match.group(3)), 2048))
        return Response(200, fakes.png(width, height, (rgb[0], rgb[1], rgb[2])), "image/png",
                        [("cache-control", "public, max-age=3600")])
