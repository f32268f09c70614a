"""The 28 OpenAI operations of spec v1.2.0, answered with spec-shaped, deterministic data.

Each public method is named after its ``operationId`` and returns either a
:class:`~openai_django.testing.http11.Response` (built with :func:`json_reply`) or a
:class:`StreamPlan` for SSE answers, or raises :class:`ApiError`.  Request validation is kept
to what is needed to produce an answer: the stand-in exists to test a gateway, not to police
clients, and newer clients send fields this spec version does not know.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from . import fakes
from .http11 import Response, dumps, loads
from .multipart import MultipartError, UploadedFile, parse_multipart
from .state import (
    MAX_CHOICES,
    MAX_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_INPUTS,
    MAX_EMBEDDING_VALUES,
    MAX_EPOCHS,
    clamp_int,
    event,
    new_id,
    new_request_id,
)

if TYPE_CHECKING:  # pragma: no cover
    from .app import StandinApp
    from .http11 import Request

SYSTEM_FINGERPRINT = "fp_standin"


class ApiError(Exception):
    """Answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code


class StreamPlan:
    """An SSE answer: ``events`` are JSON payloads (bytes) sent as ``data: ...`` lines,
    spaced by ``ttft``/``gap`` seconds, then ``data: [DONE]`` unless ``done_marker`` is off.

    ``events`` may be a lazy iterator: fine-tune event streams advance the job as they go.
    With ``named`` the events are ``(name, payload)`` pairs sent as ``event: name`` +
    ``data: ...`` (the Responses API, speech, transcription and image streams) and there is
    no ``[DONE]``; the last event is then the terminal one (``response.completed``), which the
    ``no_done`` fault leaves out.
    """

    __slots__ = ("done_marker", "events", "gap", "model", "named", "ttft")

    def __init__(self, events: Iterable[Any], model: str | None, ttft: float, gap: float,
                 done_marker: bool = True, named: bool = False) -> None:
        self.events = events
        self.model = model
        self.ttft = ttft
        self.gap = gap
        self.done_marker = done_marker and not named
        self.named = named


class EventSequence:
    """Named SSE events whose payloads carry ``type`` and a running ``sequence_number``."""

    __slots__ = ("events", "numbered")

    def __init__(self, numbered: bool = True) -> None:
        self.events: list[tuple[bytes, bytes]] = []
        self.numbered = numbered  # the Responses API numbers its events; audio/images do not

    def add(self, name: str, /, **fields: Any) -> None:
        payload: dict[str, Any] = {"type": name}
        if self.numbered:
            payload["sequence_number"] = len(self.events)
        payload.update(fields)
        self.events.append((name.encode(), dumps(payload)))


def reply_text(seed: bytes, last_user: str, tool_results: int = 0,
               wants_json: bool = False) -> str:
    """The assistant's answer: a seeded phrase quoting the user (``You said: "..."``)."""
    said = fakes.quote(last_user)
    if wants_json:
        return dumps({"reply": fakes.phrase(seed), "quote": said}).decode()
    text = f"{fakes.phrase(seed)}. You said: \"{said}\""
    if tool_results:
        text += f" (using {tool_results} tool result{'s' if tool_results > 1 else ''})"
    return text


def json_reply(obj: Any, model: str | None = None, status: int = 200) -> Response:
    headers = [("openai-model", model)] if model else []
    return Response(status, dumps(obj), "application/json", headers)


def text_reply(text: str, model: str | None = None) -> Response:
    headers = [("openai-model", model)] if model else []
    return Response(200, text.encode(), "text/plain; charset=utf-8", headers)


def _not_found(what: str, ident: str, param: str | None = None,
               code: str | None = None) -> ApiError:
    return ApiError(404, f"No such {what}: {ident}", param=param, code=code)


# -- request helpers -------------------------------------------------------------------------


def body_json(req: Request) -> dict:
    """The JSON object body (memoised on the request); 400 if it is not one."""
    cache = req.cache
    if "json" in cache:
        value = cache["json"]
    else:
        try:
            value = loads(req.body) if req.body else {}
        except ValueError:
            value = ValueError
        cache["json"] = value
    if value is ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This "
                            "likely means you aren't using your HTTP library correctly.)")
    if not isinstance(value, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return value


def form_data(req: Request) -> tuple[dict[str, str], list[UploadedFile]]:
    """Multipart fields and files (memoised); 400 if the body is not multipart."""
    cache = req.cache
    if "form" not in cache:
        ctype = req.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(400, "This endpoint expects multipart/form-data.")
        try:
            cache["form"] = parse_multipart(req.body, ctype)
        except MultipartError as exc:
            raise ApiError(400, f"Could not parse the multipart form: {exc}") from None
    return cache["form"]


def query_params(req: Request) -> dict[str, str]:
    cache = req.cache
    if "query" not in cache:
        cache["query"] = dict(parse_qsl(req.query_string, keep_blank_values=True))
    return cache["query"]


def _int(value: Any, default: int, param: str, low: int = 1, high: int = 128) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"'{value}' is not a valid integer for '{param}'.",
                       param=param) from None
    if not low <= n <= high:
        raise ApiError(400, f"'{param}' must be between {low} and {high}.", param=param)
    return n


def _list(value: Any) -> list:
    """A request field that should be a list, or ``[]`` when it is anything else."""
    return value if isinstance(value, list) else []


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


# -- chat message helpers ----------------------------------------------------------------------


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, a list of parts, or null."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                elif isinstance(text, dict) and isinstance(text.get("value"), str):
                    texts.append(text["value"])
        return " ".join(texts)
    return str(content)


def _message_tokens(message: dict) -> int:
    tokens = 3 + fakes.count_tokens(content_text(message.get("content")))
    content = message.get("content")
    if isinstance(content, list):
        tokens += 85 * sum(1 for p in content
                           if isinstance(p, dict) and str(p.get("type", "")).startswith(
                               ("image", "input_image", "input_audio")))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            tokens += 3 + fakes.count_tokens(str(fn.get("arguments", "")))
    if isinstance(message.get("function_call"), dict):
        tokens += 3 + fakes.count_tokens(str(message["function_call"].get("arguments", "")))
    if message.get("name"):
        tokens += 1
    return tokens


_PLACE_RE = re.compile(r"\b(?:in|at|for)\s+([A-Z][\w\-]*(?:\s+[A-Z][\w\-]*)*)")


def _tool_arguments(schema: Any, user_text: str) -> dict:
    """Fill a function's JSON-schema parameters with plausible, deterministic values."""
    place_match = _PLACE_RE.search(user_text)
    place = place_match.group(1) if place_match else "San Francisco"
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        return {"location": place}
    args: dict[str, Any] = {}
    for name, spec in list(props.items())[:8]:
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("enum"):
            args[name] = spec["enum"][0]
            continue
        kind = spec.get("type")
        if kind in ("integer", "number"):
            args[name] = 1
        elif kind == "boolean":
            args[name] = True
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = {}
        elif name in ("location", "city", "place", "where"):
            args[name] = place
        else:
            args[name] = fakes.quote(user_text, 4) or name
    return args


class Operations:
    """Answers for every operation; stores and knobs come from the owning app."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    # -- completions ---------------------------------------------------------------------------

    def createCompletion(self, req: Request) -> Any:
        body = body_json(req)
        model = str(body.get("model") or "text-davinci-003")
        prompt = body.get("prompt", "<|endoftext|>")
        prompts = self._prompts(prompt)
        n = _int(body.get("n"), 1, "n")
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, f"Too many choices: {len(prompts)} prompts x n={n} is more than "
                                f"{MAX_CHOICES}.", param="n")
        max_tokens = body.get("max_tokens")
        echo = _truthy(body.get("echo"))
        logprobs = body.get("logprobs")
        created = int(time.time())
        choices = []
        completion_tokens = 0
        for p_index, (text, _) in enumerate(prompts):
            for j in range(n):
                seed = fakes.digest("completion", model, text, j)
                out = f" {fakes.phrase(seed)}. Re: \"{fakes.quote(text)}\""
                finish = "stop"
                if isinstance(max_tokens, int) and max_tokens >= 0:
                    out, cut = fakes.truncate_words(out, max_tokens)
                    if cut:
                        finish = "length"
                completion_tokens += fakes.count_tokens(out)
                if echo:
                    out = text + out
                choice: dict[str, Any] = {"text": out, "index": p_index * n + j,
                                          "logprobs": None, "finish_reason": finish}
                if isinstance(logprobs, int) and not isinstance(logprobs, bool):
                    choice["logprobs"] = self._completion_logprobs(out, logprobs)
                choices.append(choice)
        prompt_tokens = sum(count for _, count in prompts)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        cid = new_id("cmpl-")
        if _truthy(body.get("stream")):
            return self._completion_stream(req, body, cid, created, model, choices, usage)
        return json_reply({"id": cid, "object": "text_completion", "created": created,
                           "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                           "choices": choices, "usage": usage}, model)

    @staticmethod
    def _prompts(prompt: Any) -> list[tuple[str, int]]:
        """Normalise every prompt form to (text, token count) pairs."""
        if isinstance(prompt, str):
            return [(prompt, fakes.count_tokens(prompt))]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(t, int) for t in prompt):
                return [(" ".join(map(str, prompt)), len(prompt))]
            out = []
            for item in prompt:
                if isinstance(item, list):
                    out.append((" ".join(map(str, item)), len(item)))
                else:
                    out.append((str(item), fakes.count_tokens(str(item))))
            return out
        return [("", 0)]

    @staticmethod
    def _completion_logprobs(text: str, top: int) -> dict:
        tokens = [t for t in re.findall(r"\s*\S+", text)]
        offsets, pos = [], 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
        return {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens),
                "top_logprobs": [{tok: -0.1} for tok in tokens] if top else None,
                "text_offset": offsets}

    def _completion_stream(self, req: Request, body: dict, cid: str, created: int,
                           model: str, choices: list[dict], usage: dict) -> StreamPlan:
        events, ttft, gap = self.app.knobs(req)
        pieces = [fakes.split_text(c["text"], events) for c in choices]
        include_usage = _include_usage(body)

        def gen() -> Iterator[bytes]:
            for k in range(events):
                last = k == events - 1
                chunk: dict[str, Any] = {
                    "id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [{"text": pieces[i][k], "index": c["index"], "logprobs": None,
                                 "finish_reason": c["finish_reason"] if last else None}
                                for i, c in enumerate(choices)]}
                if include_usage:
                    chunk["usage"] = None
                yield dumps(chunk)
            if include_usage:
                yield dumps({"id": cid, "object": "text_completion", "created": created,
                             "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                             "choices": [], "usage": usage})

        return StreamPlan(gen(), model, ttft, gap)

    # -- chat --------------------------------------------------------------------------------------

    def createChatCompletion(self, req: Request) -> Any:
        body = body_json(req)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' is a required property and must be a non-empty "
                                "array.", param="messages")
        messages = [m for m in messages if isinstance(m, dict)]
        model = str(body.get("model") or "gpt-3.5-turbo")
        n = _int(body.get("n"), 1, "n")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        created = int(time.time())
        last_user = ""
        last_user_index = -1
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "user":
                last_user = content_text(messages[i].get("content"))
                last_user_index = i
                break
        tool_results = sum(1 for m in messages[last_user_index + 1:]
                           if m.get("role") in ("tool", "function"))
        prompt_tokens = 3 + sum(_message_tokens(m) for m in messages)
        call = self._wanted_call(body, messages, last_user, last_user_index)
        response_format = body.get("response_format")
        wants_json = (isinstance(response_format, dict)
                      and response_format.get("type") in ("json_object", "json_schema"))
        choices = []
        completion_tokens = 0
        # Seeded by what the conversation says (cheap, and stable across JSON encoders).
        convo = "\x1e".join(f"{m.get('role')}:{content_text(m.get('content'))}"
                             for m in messages)
        for j in range(n):
            seed = fakes.digest("chat", model, convo, j)
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if call is not None:
                name, arguments, legacy = call
                if legacy:
                    message["function_call"] = {"name": name, "arguments": arguments}
                    finish = "function_call"
                else:
                    message["tool_calls"] = [{
                        "id": "call_" + seed.hex()[:24], "type": "function",
                        "function": {"name": name, "arguments": arguments}}]
                    finish = "tool_calls"
                completion_tokens += 3 + fakes.count_tokens(arguments)
            else:
                text = reply_text(seed, last_user, tool_results, wants_json)
                finish = "stop"
                if isinstance(limit, int) and limit >= 0 and not wants_json:
                    text, cut = fakes.truncate_words(text, limit)
                    if cut:
                        finish = "length"
                message["content"] = text
                completion_tokens += fakes.count_tokens(text)
            choice: dict[str, Any] = {"index": j, "message": message, "logprobs": None,
                                      "finish_reason": finish}
            if _truthy(body.get("logprobs")) and message["content"]:
                choice["logprobs"] = {"content": [
                    {"token": tok, "logprob": -0.1, "bytes": list(tok.encode()),
                     "top_logprobs": []} for tok in re.findall(r"\s*\S+", message["content"])]}
            choices.append(choice)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        cid = new_id("chatcmpl-")
        obj = {"id": cid, "object": "chat.completion", "created": created, "model": model,
               "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices, "usage": usage,
               "service_tier": "default"}
        if body.get("store") is True:  # listed by the stored-completion endpoints
            metadata = body.get("metadata")
            self.app.stores.chat.add({
                "id": cid, "messages": messages,
                "completion": {**obj, "metadata": metadata if isinstance(metadata, dict)
                               else {}, "request_id": new_request_id()}})
        if _truthy(body.get("stream")):
            return self._chat_stream(req, body, cid, created, model, choices, usage)
        return json_reply(obj, model)

    @staticmethod
    def _wanted_call(body: dict, messages: list[dict], last_user: str,
                     last_user_index: int) -> tuple[str, str, bool] | None:
        """(function name, JSON arguments, legacy?) when the reply should call a tool.

        A tool is called when tools are offered, the conversation ends with the user's turn,
        and either the user mentions the weather or ``tool_choice`` forces a call.
        """
        tools = body.get("tools")
        functions = body.get("functions")
        legacy = not tools and bool(functions)
        offered: list[dict] = []
        if isinstance(tools, list):
            offered = [t.get("function") for t in tools
                       if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        elif isinstance(functions, list):
            offered = [f for f in functions if isinstance(f, dict)]
        if not offered or last_user_index != len(messages) - 1:
            return None
        choice = body.get("function_call") if legacy else body.get("tool_choice")
        if choice == "none":
            return None
        forced: str | None = None
        if isinstance(choice, dict):
            forced = (choice.get("function") or {}).get("name") or choice.get("name")
        wants = (forced is not None or choice == "required"
                 or re.search(r"\bweather\b", last_user, re.IGNORECASE) is not None)
        if not wants:
            return None
        fn = next((f for f in offered if f.get("name") == forced), offered[0])
        name = str(fn.get("name") or "get_weather")
        # The stdlib's spaced separators give the stream splitter word boundaries.
        arguments = json.dumps(_tool_arguments(fn.get("parameters"), last_user))
        return name, arguments, legacy

    def _chat_stream(self, req: Request, body: dict, cid: str, created: int, model: str,
                     choices: list[dict], usage: dict) -> StreamPlan:
        events, ttft, gap = self.app.knobs(req)
        include_usage = _include_usage(body)
        content_slots = max(1, events - 1)
        per_choice: list[list[dict]] = []
        for c in choices:
            msg = c["message"]
            deltas: list[dict] = []
            if msg.get("tool_calls"):
                call = msg["tool_calls"][0]
                pieces = fakes.split_text(call["function"]["arguments"], content_slots)
                for k, piece in enumerate(pieces):
                    if k == 0:
                        deltas.append({"role": "assistant", "content": None, "tool_calls": [{
                            "index": 0, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": piece}}]})
                    else:
                        deltas.append({"tool_calls": [{"index": 0,
                                                       "function": {"arguments": piece}}]})
            elif msg.get("function_call"):
                fc = msg["function_call"]
                pieces = fakes.split_text(fc["arguments"], content_slots)
                for k, piece in enumerate(pieces):
                    if k == 0:
                        deltas.append({"role": "assistant", "content": None,
                                       "function_call": {"name": fc["name"], "arguments": piece}})
                    else:
                        deltas.append({"function_call": {"arguments": piece}})
            else:
                pieces = fakes.split_text(msg["content"] or "", content_slots)
                for k, piece in enumerate(pieces):
                    delta: dict[str, Any] = {"content": piece}
                    if k == 0:
                        delta = {"role": "assistant", "content": piece, "refusal": None}
                    deltas.append(delta)
            per_choice.append(deltas)

        def chunk(choice_list: list[dict]) -> bytes:
            obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                                   "created": created, "model": model,
                                   "system_fingerprint": SYSTEM_FINGERPRINT,
                                   "choices": choice_list}
            if include_usage:
                obj["usage"] = None
            return dumps(obj)

        def gen() -> Iterator[bytes]:
            if events == 1:
                yield chunk([{"index": c["index"], "delta": per_choice[i][0], "logprobs": None,
                              "finish_reason": c["finish_reason"]}
                             for i, c in enumerate(choices)])
            else:
                for k in range(content_slots):
                    yield chunk([{"index": c["index"], "delta": per_choice[i][k],
                                  "logprobs": None, "finish_reason": None}
                                 for i, c in enumerate(choices)])
                yield chunk([{"index": c["index"], "delta": {}, "logprobs": None,
                              "finish_reason": c["finish_reason"]} for c in choices])
            if include_usage:
                yield dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                             "choices": [], "usage": usage})

        return StreamPlan(gen(), model, ttft, gap)

    # -- edits -------------------------------------------------------------------------------------

    def createEdit(self, req: Request) -> Response:
        body = body_json(req)
        model = str(body.get("model") or "text-davinci-edit-001")
        instruction = body.get("instruction")
        if not isinstance(instruction, str):
            raise ApiError(400, "'instruction' is a required property.", param="instruction")
        source = body.get("input") or ""
        source = source if isinstance(source, str) else str(source)
        n = _int(body.get("n"), 1, "n", high=20)
        choices = []
        completion_tokens = 0
        for j in range(n):
            seed = fakes.digest("edit", model, instruction, source, j)
            text = (f"{source}{' ' if source else ''}[{fakes.quote(instruction)}] "
                    f"{fakes.phrase(seed)}.\n")
            completion_tokens += fakes.count_tokens(text)
            choices.append({"text": text, "index": j, "logprobs": None, "finish_reason": "stop"})
        prompt_tokens = fakes.count_tokens(instruction) + fakes.count_tokens(source)
        return json_reply({"object": "edit", "created": int(time.time()), "choices": choices,
                           "usage": {"prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}}, model)

    # -- images ------------------------------------------------------------------------------------

    def _images(self, seed_parts: tuple, n: Any, size: Any, response_format: Any,
                model: str | None) -> Response:
        count = _int(n, 1, "n", high=10)
        width, height = fakes.parse_size(size)
        fmt = response_format or "url"
        if fmt not in ("url", "b64_json"):
            raise ApiError(400, f"'{fmt}' is not one of ['url', 'b64_json'] - "
                                "'response_format'", param="response_format")
        data = []
        base = self.app.config.effective_image_base_url
        for i in range(count):
            seed = fakes.digest("image", *seed_parts, i)
            rgb = fakes.colour(seed)
            if fmt == "b64_json":
                item = {"b64_json": base64.b64encode(fakes.png(width, height, rgb)).decode()}
            else:
                name = f"img-{bytes(rgb).hex()}-{width}x{height}-{seed[3:9].hex()}"
                item = {"url": f"{base}/images/{name}.png"}
            if seed_parts and isinstance(seed_parts[0], str) and seed_parts[0]:
                item["revised_prompt"] = seed_parts[0]
            data.append(item)
        return json_reply({"created": int(time.time()), "data": data}, model)

    def createImage(self, req: Request) -> Response:
        body = body_json(req)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' is a required property.", param="prompt")
        return self._images((prompt, body.get("model")), body.get("n"), body.get("size"),
                            body.get("response_format"), body.get("model"))

    def _image_upload(self, req: Request, need_prompt: bool) -> Response:
        fields, files = form_data(req)
        images = [f for f in files if f.field.startswith("image")]
        if not images:
            raise ApiError(400, "'image' is a required property.", param="image")
        prompt = fields.get("prompt", "")
        if need_prompt and not prompt:
            raise ApiError(400, "'prompt' is a required property.", param="prompt")
        seed_parts = (prompt, *(f.sha256 for f in files))
        return self._images(seed_parts, fields.get("n"), fields.get("size"),
                            fields.get("response_format"), fields.get("model"))

    def createImageEdit(self, req: Request) -> Response:
        return self._image_upload(req, need_prompt=True)

    def createImageVariation(self, req: Request) -> Response:
        return self._image_upload(req, need_prompt=False)

    # -- embeddings and moderations ------------------------------------------------------------

    def createEmbedding(self, req: Request) -> Response:
        body = body_json(req)
        model = str(body.get("model") or "text-embedding-ada-002")
        raw = body.get("input")
        if raw is None or raw == "" or raw == []:
            raise ApiError(400, "'input' is a required property.", param="input")
        if isinstance(raw, str):
            items: list[Any] = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            items = [raw]
        elif isinstance(raw, list):
            items = raw
        else:
            raise ApiError(400, "'input' must be a string or an array.", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ApiError(400, f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.",
                           param="input")
        dims = body.get("dimensions")
        dims = (self.app.config.embedding_dimensions if dims is None
                else _int(dims, 0, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS))
        if len(items) * dims > MAX_EMBEDDING_VALUES:
            raise ApiError(400, f"{len(items)} inputs x {dims} dimensions is more than the "
                                f"stand-in's {MAX_EMBEDDING_VALUES} values.", param="dimensions")
        b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, list):
                key = dumps(item)
                tokens += len(item)
            else:
                item = str(item)
                key = item.encode()
                tokens += fakes.count_tokens(item)
            vec = fakes.embedding(model.encode() + b"\x00" + key, dims)
            data.append({"object": "embedding", "index": i,
                         "embedding": fakes.embedding_base64(vec) if b64 else list(vec)})
        return json_reply({"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, model)

    def createModeration(self, req: Request) -> Response:
        body = body_json(req)
        model = str(body.get("model") or "text-moderation-latest")
        raw = body.get("input")
        if raw is None:
            raise ApiError(400, "'input' is a required property.", param="input")
        items = raw if isinstance(raw, list) else [raw]
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ApiError(400, f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.",
                           param="input")
        results = [fakes.moderation_result(content_text([i]) if isinstance(i, dict) else str(i))
                   for i in items]
        return json_reply({"id": new_id("modr-"), "model": model, "results": results}, model)

    # -- audio -------------------------------------------------------------------------------------

    def _audio(self, req: Request, task: str) -> Response:
        fields, files = form_data(req)
        upload = next((f for f in files if f.field == "file"), None)
        if upload is None:
            raise ApiError(400, "'file' is a required property.", param="file")
        model = fields.get("model") or "whisper-1"
        seed = fakes.digest(task, upload.sha256, fields.get("prompt", ""))
        verb = "Transcript" if task == "transcribe" else "Translation"
        text = (f"{verb} of {upload.filename} ({upload.size} bytes, sha256 "
                f"{upload.sha256[:12]}): {fakes.phrase(seed)}.")
        duration = fakes.audio_duration(upload.size)
        fmt = fields.get("response_format") or "json"
        if fmt == "json":
            return json_reply({"text": text}, model)
        if fmt == "text":
            return text_reply(text + "\n", model)
        if fmt == "srt":
            return text_reply(fakes.srt(text, duration), model)
        if fmt == "vtt":
            return text_reply(fakes.vtt(text, duration), model)
        if fmt == "verbose_json":
            language = fields.get("language") or "english"
            if task == "translate":
                language = "english"
            words = text.split()
            step = duration / max(1, len(words))
            result: dict[str, Any] = {
                "task": task, "language": language, "duration": duration, "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text,
                              "tokens": [50364 + i for i in range(len(words))],
                              "temperature": 0.0, "avg_logprob": -0.25,
                              "compression_ratio": 1.2, "no_speech_prob": 0.01}]}
            if "word" in fields.get("timestamp_granularities[]", ""):
                result["words"] = [{"word": w, "start": round(i * step, 3),
                                    "end": round((i + 1) * step, 3)}
                                   for i, w in enumerate(words)]
            return json_reply(result, model)
        raise ApiError(400, f"'{fmt}' is not a valid response_format.", param="response_format")

    def createTranscription(self, req: Request) -> Response:
        return self._audio(req, "transcribe")

    def createTranslation(self, req: Request) -> Response:
        return self._audio(req, "translate")

    # -- files -------------------------------------------------------------------------------------

    def listFiles(self, req: Request) -> Response:
        purpose = query_params(req).get("purpose")
        return json_reply({"object": "list", "data": self.app.files.list(purpose),
                           "has_more": False})

    def createFile(self, req: Request) -> Response:
        fields, files = form_data(req)
        upload = next((f for f in files if f.field == "file"), None)
        if upload is None:
            raise ApiError(400, "'file' is a required property.", param="file")
        purpose = fields.get("purpose")
        if not purpose:
            raise ApiError(400, "'purpose' is a required property.", param="purpose")
        return json_reply(self.app.files.add(upload.filename, purpose, upload.data))

    def retrieveFile(self, req: Request, file_id: str) -> Response:
        meta = self.app.files.get(file_id)
        if meta is None:
            raise _not_found("File", file_id, param="id")
        return json_reply(meta)

    def deleteFile(self, req: Request, file_id: str) -> Response:
        if not self.app.files.delete(file_id):
            raise _not_found("File", file_id, param="id")
        return json_reply({"id": file_id, "object": "file", "deleted": True})

    def downloadFile(self, req: Request, file_id: str) -> Response:
        data = self.app.files.data.get(file_id)
        if data is None:
            raise _not_found("File", file_id, param="id")
        return Response(200, data, "application/octet-stream")

    # -- fine-tunes --------------------------------------------------------------------------------

    def _file_object(self, file_id: str, purpose: str) -> dict:
        meta = self.app.files.get(file_id)
        if meta is not None:
            return meta
        # Unknown ids are accepted (the spec examples use made-up ones): describe a stub.
        return {"id": file_id, "object": "file", "bytes": 0, "created_at": int(time.time()),
                "filename": f"{file_id}.jsonl", "purpose": purpose, "status": "processed",
                "status_details": None}

    def createFineTune(self, req: Request) -> Response:
        body = body_json(req)
        training = body.get("training_file")
        if not isinstance(training, str) or not training:
            raise ApiError(400, "'training_file' is a required property.",
                           param="training_file")
        validation = body.get("validation_file")
        now = int(time.time())
        job_id = new_id("ft-")
        job = {
            "id": job_id, "object": "fine-tune", "model": str(body.get("model") or "curie"),
            "created_at": now, "updated_at": now,
            "events": [event(f"Created fine-tune: {job_id}")],
            "fine_tuned_model": None,
            "hyperparams": {
                "batch_size": body.get("batch_size") or 4,
                "learning_rate_multiplier": body.get("learning_rate_multiplier") or 0.1,
                "n_epochs": clamp_int(body.get("n_epochs"), 4, 1, MAX_EPOCHS),
                "prompt_loss_weight": body.get("prompt_loss_weight") or 0.01},
            "organization_id": "org-standin", "result_files": [], "status": "pending",
            "validation_files": ([self._file_object(validation, "fine-tune")]
                                 if isinstance(validation, str) and validation else []),
            "training_files": [self._file_object(training, "fine-tune")],
            "suffix": body.get("suffix"),
        }
        self.app.fine_tunes.add(job)
        return json_reply(job, job["model"])

    def listFineTunes(self, req: Request) -> Response:
        jobs = [{k: v for k, v in job.items() if k != "events"}
                for job in self.app.fine_tunes.list()]
        return json_reply({"object": "list", "data": jobs})

    def _job(self, job_id: str) -> dict:
        job = self.app.fine_tunes.get(job_id)
        if job is None:
            raise _not_found("fine-tune", job_id, param="fine_tune_id")
        return job

    def retrieveFineTune(self, req: Request, fine_tune_id: str) -> Response:
        return json_reply(self._job(fine_tune_id))

    def cancelFineTune(self, req: Request, fine_tune_id: str) -> Response:
        job = self._job(fine_tune_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise ApiError(400, f"Cannot cancel a job that is already {job['status']}.",
                           param="fine_tune_id")
        job["status"] = "cancelled"
        job["updated_at"] = int(time.time())
        job["events"].append(event("Fine-tune cancelled"))
        return json_reply(job)

    def listFineTuneEvents(self, req: Request, fine_tune_id: str) -> Any:
        job = self._job(fine_tune_id)
        if not _truthy(query_params(req).get("stream", "false")):
            return json_reply({"object": "list", "data": list(job["events"])})
        _, ttft, gap = self.app.knobs(req)
        return StreamPlan(self._run_job(job), None, ttft, gap)

    def _run_job(self, job: dict) -> Iterator[bytes]:
        """Replay the job's events, then (if still pending) run it to success event by event."""
        for ev in list(job["events"]):
            yield dumps(ev)
        if job["status"] not in ("pending", "running"):
            return
        epochs = clamp_int(job["hyperparams"].get("n_epochs"), 4, 1, MAX_EPOCHS)
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
        model_name = f"{job['model']}:ft-standin-{stamp}"
        result_file = self.app.files.add(
            "compiled_results.csv", "fine-tune-results",
            b"step,elapsed_tokens,training_loss\n1,1024,0.5\n")
        steps = ["Fine-tune costs $0.00", "Fine-tune enqueued. Queue number: 0",
                 "Fine-tune started"]
        steps += [f"Completed epoch {i}/{epochs}" for i in range(1, epochs + 1)]
        steps += [f"Uploaded model: {model_name}", f"Uploaded result file: {result_file['id']}",
                  "Fine-tune succeeded"]
        for message in steps:
            if job["status"] == "cancelled":
                return
            job["status"] = "running"
            ev = event(message)
            job["events"].append(ev)
            job["updated_at"] = ev["created_at"]
            if message == "Fine-tune succeeded":
                job["status"] = "succeeded"
                job["fine_tuned_model"] = model_name
                job["result_files"] = [result_file]
                self.app.models.add(model_name, "standin-org")
            yield dumps(ev)

    # -- models and engines ------------------------------------------------------------------------

    def listModels(self, req: Request) -> Response:
        return json_reply({"object": "list", "data": self.app.models.list()})

    def retrieveModel(self, req: Request, model: str) -> Response:
        obj = self.app.models.get(model)
        if obj is None:
            raise ApiError(404, f"The model '{model}' does not exist", param="model",
                           code="model_not_found")
        return json_reply(obj, model)

    def deleteModel(self, req: Request, model: str) -> Response:
        known = self.app.models.delete(model)
        if not known and "ft" not in model:
            raise ApiError(404, f"The model '{model}' does not exist", param="model",
                           code="model_not_found")
        return json_reply({"id": model, "object": "model", "deleted": True})

    @staticmethod
    def _engine(model: dict) -> dict:
        return {"id": model["id"], "object": "engine", "created": None, "ready": True,
                "owner": model["owned_by"]}

    def listEngines(self, req: Request) -> Response:
        return json_reply({"object": "list",
                           "data": [self._engine(m) for m in self.app.models.list()]})

    def retrieveEngine(self, req: Request, engine_id: str) -> Response:
        obj = self.app.models.get(engine_id)
        if obj is None:
            raise ApiError(404, f"No such engine: {engine_id}", param="engine_id",
                           code="engine_not_found")
        return json_reply(self._engine(obj), engine_id)

    # -- deprecated search / answers / classifications ---------------------------------------------

    def _documents(self, body: dict) -> list[str]:
        docs = body.get("documents")
        if isinstance(docs, list):
            return [content_text(d) if not isinstance(d, str) else d for d in docs]
        file_id = body.get("file")
        if isinstance(file_id, str) and file_id in self.app.files.data:
            out = []
            for line in self.app.files.data[file_id].decode("utf-8", "replace").splitlines():
                try:
                    item = loads(line.encode())
                except ValueError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    out.append(item["text"])
            return out
        return []

    @staticmethod
    def _score(query: str, doc: str) -> float:
        """Word overlap plus a deterministic fraction, so ties are broken stably."""
        q = set(re.findall(r"\w+", query.lower()))
        d = set(re.findall(r"\w+", doc.lower()))
        noise = fakes.digest("score", query, doc)[0] / 255.0
        return round(100.0 * len(q & d) + 10.0 * noise, 3)

    def createSearch(self, req: Request, engine_id: str) -> Response:
        body = body_json(req)
        query = body.get("query")
        if not isinstance(query, str):
            raise ApiError(400, "'query' is a required property.", param="query")
        docs = self._documents(body)
        data = [{"object": "search_result", "document": i, "score": self._score(query, d)}
                for i, d in enumerate(docs)]
        if isinstance(body.get("max_rerank"), int):
            data = sorted(data, key=lambda r: -r["score"])[:body["max_rerank"]]
            data.sort(key=lambda r: r["document"])
        if body.get("return_metadata"):
            for r in data:
                r["metadata"] = None
        return json_reply({"object": "list", "data": data, "model": engine_id}, engine_id)

    def createAnswer(self, req: Request) -> Response:
        body = body_json(req)
        question = body.get("question")
        if not isinstance(question, str):
            raise ApiError(400, "'question' is a required property.", param="question")
        model = str(body.get("model") or "curie")
        docs = self._documents(body)
        ranked = sorted(range(len(docs)), key=lambda i: -self._score(question, docs[i]))
        rerank = body.get("max_rerank") if isinstance(body.get("max_rerank"), int) else 200
        selected = [{"document": i, "text": docs[i]} for i in ranked[:rerank]]
        best = docs[ranked[0]] if ranked else question
        n = _int(body.get("n"), 1, "n", high=10)
        answer = fakes.quote(best, 6)
        if body.get("max_tokens") is not None:
            answer, _ = fakes.truncate_words(answer, _int(body["max_tokens"], 16, "max_tokens",
                                                          0, 100000))
        return json_reply({"object": "answer", "model": model,
                           "search_model": str(body.get("search_model") or "ada"),
                           "completion": new_id("cmpl-"), "answers": [answer] * n,
                           "selected_documents": selected}, model)

    def createClassification(self, req: Request) -> Response:
        body = body_json(req)
        query = body.get("query")
        if not isinstance(query, str):
            raise ApiError(400, "'query' is a required property.", param="query")
        model = str(body.get("model") or "curie")
        examples = [e for e in _list(body.get("examples"))
                    if isinstance(e, list) and len(e) >= 2]
        labels = [str(x) for x in _list(body.get("labels"))]
        ranked = sorted(range(len(examples)),
                        key=lambda i: -self._score(query, str(examples[i][0])))
        selected = [{"document": i, "text": str(examples[i][0]), "label": str(examples[i][1])}
                    for i in ranked]
        if selected:
            label = selected[0]["label"]
        elif labels:
            label = labels[fakes.digest("label", query)[0] % len(labels)]
        else:
            label = "Neutral"
        return json_reply({"object": "classification", "model": model,
                           "search_model": str(body.get("search_model") or "ada"),
                           "completion": new_id("cmpl-"), "label": label,
                           "selected_examples": selected}, model)


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))
