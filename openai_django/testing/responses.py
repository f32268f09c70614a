"""The Responses API and conversations (spec 2.3.0), stateful like the real ones.

``POST /responses`` answers like chat does (``You said: "..."``; a ``function_call`` item when
function tools are offered and the user asks about the weather or ``tool_choice`` forces one;
a ``reasoning`` item first for reasoning models given ``reasoning``), as JSON or, with
``stream: true``, as named events from ``response.created`` to ``response.completed``.
Responses are stored unless ``store: false`` (get, delete, input items, cancel for
``background: true`` ones, which finish after the ``job_seconds`` knob).  Conversations keep
their items; a response made in a conversation appends its input and output to it.
"""

from __future__ import annotations

import base64
import copy
import time
from typing import TYPE_CHECKING, Any

from . import fakes
from .operations import (
    ApiError,
    EventSequence,
    Operations,
    StreamPlan,
    _message_tokens,
    body_json,
    content_text,
    json_reply,
    query_params,
    reply_text,
)
from .state import MAX_REASONING_TOKENS, new_id, page

if TYPE_CHECKING:  # pragma: no cover
    from .app import StandinApp
    from .http11 import Request, Response

#: Items one request may add to a conversation (the real API's limit).
MAX_NEW_ITEMS = 20
#: Items kept per conversation and per response's input (the oldest go first).
MAX_ITEMS = 1000
REASONING_TOKENS = {"minimal": 16, "low": 64, "medium": 192, "high": 512, "xhigh": 1024}
_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
                "reasoning": "rs_"}


def is_reasoning_model(model: str) -> bool:
    return model.startswith("gpt-5") or (model[:1] == "o" and model[1:2].isdigit())


def _not_found(what: str, ident: str, param: str) -> ApiError:
    return ApiError(404, f"{what} with id '{ident}' not found.", param=param)


# -- input items -------------------------------------------------------------------------------


def normalise_items(raw: Any) -> list[dict]:
    """Input (a string or a list of items / easy messages) as stored items with ids."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise ApiError(400, "'input' must be a string or an array of items.", param="input")
    items = []
    for index, entry in enumerate(raw[:MAX_ITEMS]):
        if not isinstance(entry, dict):
            continue
        item = dict(entry)
        kind = item.setdefault("type", "message")
        if not isinstance(kind, str):
            raise ApiError(400, f"Invalid type for 'input[{index}].type': expected a string.",
                           param=f"input[{index}].type")
        if kind == "message":
            role = item.setdefault("role", "user")
            content = item.get("content")
            part = "output_text" if role == "assistant" else "input_text"
            if isinstance(content, str):
                item["content"] = [{"type": part, "text": content}]
            elif content is None:
                item["content"] = []
            item.setdefault("status", "completed")
        item.setdefault("id", new_id(_ID_PREFIXES.get(kind, "item_")))
        items.append(item)
    return items


def chat_messages(items: list[dict], instructions: Any = None) -> list[dict]:
    """The items as chat messages, to share chat's reply and token logic."""
    messages: list[dict] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    for item in items:
        kind = item.get("type")
        if kind == "message":
            messages.append({"role": item.get("role", "user"),
                             "content": content_text(item.get("content"))})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": item.get("name", ""),
                                                  "arguments": item.get("arguments", "")}}]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "content": content_text(output)
                             if not isinstance(output, str) else output})
    return messages


def count_input_tokens(messages: list[dict]) -> int:
    return 3 + sum(_message_tokens(m) for m in messages) if messages else 0


def _chat_tools(body: dict) -> dict:
    """Responses' function tools in the chat shape that ``Operations._wanted_call`` reads."""
    tools = [{"type": "function", "function": {"name": t.get("name"),
                                               "parameters": t.get("parameters")}}
             for t in body.get("tools") or [] if isinstance(t, dict)
             and t.get("type") == "function"]
    return {"tools": tools, "tool_choice": body.get("tool_choice")}


def _usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int) -> dict:
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens + reasoning}


class ResponsesOps:
    """``/responses`` and ``/conversations``; state in ``app.stores``."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    # -- helpers -----------------------------------------------------------------------------

    def _context(self, body: dict) -> tuple[list[dict], dict | None]:
        """Items that come before this input (a previous response's, or the conversation's)."""
        stores = self.app.stores
        prev_id = body.get("previous_response_id")
        if prev_id:
            record = stores.responses.get(str(prev_id))
            if record is None:
                raise _not_found("Previous response", str(prev_id), "previous_response_id")
            resp = self._current(record)
            return record["context"] + record["input"] + resp["output"], None
        conv = body.get("conversation")
        conv_id = conv.get("id") if isinstance(conv, dict) else conv
        if conv_id:
            record = stores.conversations.get(str(conv_id))
            if record is None:
                raise _not_found("Conversation", str(conv_id), "conversation")
            return list(record["items"]), record
        return [], None

    def _output(self, body: dict, model: str, messages: list[dict]) -> tuple[list[dict], dict]:
        """(output items, usage counts) for a conversation as chat messages."""
        last_user, last_index = "", -1
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "user":
                last_user, last_index = str(messages[i].get("content") or ""), i
                break
        tool_results = sum(1 for m in messages[last_index + 1:] if m.get("role") == "tool")
        convo = "\x1e".join(f"{m.get('role')}:{m.get('content')}" for m in messages)
        seed = fakes.digest("response", model, convo)
        output: list[dict] = []
        reasoning_tokens = 0
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict) and is_reasoning_model(model):
            effort = str(reasoning.get("effort") or "medium")
            reasoning_tokens = min(MAX_REASONING_TOKENS, REASONING_TOKENS.get(effort, 192))
            summary = (f"**Thinking it over**\n\nThe user said \"{fakes.quote(last_user)}\"; "
                       f"{fakes.phrase(seed[::-1]).lower()}.")
            output.append({"id": new_id("rs_"), "type": "reasoning",
                           "summary": [{"type": "summary_text", "text": summary}]})
        call = Operations._wanted_call(_chat_tools(body), messages, last_user, last_index)
        status, incomplete = "completed", None
        if call is not None:
            name, arguments, _ = call
            output.append({"id": new_id("fc_"), "type": "function_call", "status": "completed",
                           "arguments": arguments, "call_id": "call_" + seed.hex()[:24],
                           "name": name})
            out_tokens = 3 + fakes.count_tokens(arguments)
        else:
            fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"),
                                                                       dict) else None
            wants_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object",
                                                                      "json_schema")
            text = reply_text(seed, last_user, tool_results, wants_json)
            limit = body.get("max_output_tokens")
            if isinstance(limit, int) and not isinstance(limit, bool) and not wants_json:
                text, cut = fakes.truncate_words(text, max(0, limit - reasoning_tokens))
                if cut:
                    status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            output.append({"id": new_id("msg_"), "type": "message", "status": status,
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": text, "annotations": [],
                                "logprobs": []}]})
            out_tokens = fakes.count_tokens(text)
        return output, {"status": status, "incomplete": incomplete, "output": out_tokens,
                        "reasoning": reasoning_tokens}

    @staticmethod
    def _response(resp_id: str, body: dict, model: str, created: int) -> dict:
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        conv = body.get("conversation")
        return {
            "id": resp_id, "object": "response", "created_at": created, "status": "in_progress",
            "background": bool(body.get("background")), "completed_at": None, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "conversation": ({"id": conv.get("id") if isinstance(conv, dict) else conv}
                             if conv else None),
            "reasoning": {"effort": reasoning.get("effort"),
                          "summary": reasoning.get("summary")},
            "service_tier": "default", "store": body.get("store", True) is not False,
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
            "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {},
        }

    def _current(self, record: dict) -> dict:
        """The stored response, advanced to done when a background one has had its time."""
        resp = record["response"]
        if resp["status"] in ("queued", "in_progress"):
            elapsed = time.monotonic() - record["started"]
            if elapsed >= self.app.config.job_seconds:
                resp.update(record.pop("final"))
            elif elapsed >= self.app.config.job_seconds / 2:
                resp["status"] = "in_progress"
        return resp

    # -- /responses --------------------------------------------------------------------------

    def createResponse(self, req: Request) -> Any:
        body = body_json(req)
        model = str(body.get("model") or "gpt-4o-mini")
        context, conversation = self._context(body)
        items = normalise_items(body.get("input"))
        messages = chat_messages(context + items, body.get("instructions"))
        output, counts = self._output(body, model, messages)
        input_tokens = count_input_tokens(messages)
        cached = min(input_tokens, count_input_tokens(chat_messages(context))) if context else 0
        created = int(time.time())
        resp = self._response(new_id("resp_"), body, model, created)
        final = {"status": counts["status"], "output": output,
                 "completed_at": int(time.time()) if counts["status"] == "completed" else None,
                 "incomplete_details": counts["incomplete"],
                 "usage": _usage(input_tokens, cached, counts["output"], counts["reasoning"])}
        stream = bool(body.get("stream"))
        if conversation is not None:
            conversation["items"].extend(items + output)
            del conversation["items"][:-MAX_ITEMS]
        if resp["store"]:
            record = {"id": resp["id"], "response": resp, "input": items[-MAX_ITEMS:],
                      "context": context[-MAX_ITEMS:], "started": time.monotonic()}
            self.app.stores.responses.add(record)
            if resp["background"] and not stream:
                resp["status"] = "queued"
                record["final"] = final
                return json_reply(resp, model)
        if not stream:
            resp.update(final)
            return json_reply(resp, model)
        initial = copy.deepcopy(resp)  # what response.created shows, before the output
        resp.update(final)
        return self._stream(req, initial, resp)

    def _stream(self, req: Request, initial: dict, final: dict) -> StreamPlan:
        events, ttft, gap = self.app.knobs(req)
        seq = EventSequence()
        seq.add("response.created", response=initial)
        seq.add("response.in_progress", response=initial)
        for index, item in enumerate(final["output"]):
            item_id = item["id"]
            kind = item["type"]
            if kind == "reasoning":
                seq.add("response.output_item.added", output_index=index,
                        item={**item, "summary": []})
                text = item["summary"][0]["text"]
                part = {"type": "summary_text", "text": ""}
                ids = {"item_id": item_id, "output_index": index, "summary_index": 0}
                seq.add("response.reasoning_summary_part.added", **ids, part=part)
                for piece in fakes.split_text(text, events):
                    seq.add("response.reasoning_summary_text.delta", **ids, delta=piece)
                seq.add("response.reasoning_summary_text.done", **ids, text=text)
                seq.add("response.reasoning_summary_part.done", **ids,
                        part={"type": "summary_text", "text": text})
            elif kind == "function_call":
                seq.add("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"})
                for piece in fakes.split_text(item["arguments"], events):
                    seq.add("response.function_call_arguments.delta", item_id=item_id,
                            output_index=index, delta=piece)
                seq.add("response.function_call_arguments.done", item_id=item_id,
                        output_index=index, name=item["name"], arguments=item["arguments"])
            else:
                part = item["content"][0]
                text = part["text"]
                seq.add("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
                ids = {"item_id": item_id, "output_index": index, "content_index": 0}
                seq.add("response.content_part.added", **ids,
                        part={"type": "output_text", "text": "", "annotations": []})
                for piece in fakes.split_text(text, events):
                    seq.add("response.output_text.delta", **ids, delta=piece, logprobs=[])
                seq.add("response.output_text.done", **ids, text=text, logprobs=[])
                seq.add("response.content_part.done", **ids, part=part)
            seq.add("response.output_item.done", output_index=index, item=item)
        terminal = "response.completed" if final["status"] == "completed" else \
            "response.incomplete"
        seq.add(terminal, response=final)
        return StreamPlan(seq.events, final["model"], ttft, gap, named=True)

    def _record(self, response_id: str) -> dict:
        record = self.app.stores.responses.get(response_id)
        if record is None:
            raise _not_found("Response", response_id, "response_id")
        return record

    def getResponse(self, req: Request, response_id: str) -> Response:
        return json_reply(self._current(self._record(response_id)))

    def deleteResponse(self, req: Request, response_id: str) -> Response:
        self._record(response_id)
        self.app.stores.responses.pop(response_id)
        return json_reply({"id": response_id, "object": "response", "deleted": True})

    def cancelResponse(self, req: Request, response_id: str) -> Response:
        record = self._record(response_id)
        resp = self._current(record)
        if not resp["background"]:
            raise ApiError(400, "Only responses created with background=true can be "
                                "cancelled.", param="response_id")
        if resp["status"] in ("queued", "in_progress"):
            record.pop("final", None)
            resp["status"] = "cancelled"
        return json_reply(resp)

    def listInputItems(self, req: Request, response_id: str) -> Response:
        record = self._record(response_id)
        return json_reply(page(record["input"], query_params(req)))

    def Compactconversation(self, req: Request) -> Response:
        body = body_json(req)
        model = str(body.get("model") or "gpt-4o-mini")
        context, _ = self._context(body)
        items = context + normalise_items(body.get("input"))
        messages = chat_messages(items, body.get("instructions"))
        tokens = count_input_tokens(messages)
        kept = [i for i in items if i.get("type") == "message" and i.get("role") == "user"][-4:]
        blob = base64.b64encode(fakes.digest("compaction", model, messages) * 4).decode()
        compaction = {"id": new_id("cmp_"), "type": "compaction", "encrypted_content": blob}
        out_tokens = 64
        return json_reply({"id": new_id("resp_"), "object": "response.compaction",
                           "created_at": int(time.time()), "output": kept + [compaction],
                           "usage": _usage(tokens, 0, out_tokens - 16, 16)}, model)

    def Getinputtokencounts(self, req: Request) -> Response:
        body = body_json(req)
        context, _ = self._context(body)
        messages = chat_messages(context + normalise_items(body.get("input")),
                                 body.get("instructions"))
        tokens = count_input_tokens(messages)
        for tool in body.get("tools") or []:
            tokens += 8 + fakes.count_tokens(str(tool))
        return json_reply({"object": "response.input_tokens", "input_tokens": tokens})

    # -- /conversations ----------------------------------------------------------------------

    def _conversation(self, conversation_id: str) -> dict:
        record = self.app.stores.conversations.get(conversation_id)
        if record is None:
            raise _not_found("Conversation", conversation_id, "conversation_id")
        return record

    @staticmethod
    def _new_items(raw: Any) -> list[dict]:
        if isinstance(raw, list) and len(raw) > MAX_NEW_ITEMS:
            raise ApiError(400, f"'items' may hold at most {MAX_NEW_ITEMS} items.",
                           param="items")
        return normalise_items(raw or [])

    def createConversation(self, req: Request) -> Response:
        body = body_json(req)
        conv = {"id": new_id("conv_"), "object": "conversation", "created_at": int(time.time()),
                "metadata": body.get("metadata") or {}}
        self.app.stores.conversations.add({"id": conv["id"], "conversation": conv,
                                           "items": self._new_items(body.get("items"))})
        return json_reply(conv)

    def getConversation(self, req: Request, conversation_id: str) -> Response:
        return json_reply(self._conversation(conversation_id)["conversation"])

    def updateConversation(self, req: Request, conversation_id: str) -> Response:
        conv = self._conversation(conversation_id)["conversation"]
        metadata = body_json(req).get("metadata")
        if isinstance(metadata, dict):
            conv["metadata"] = metadata
        return json_reply(conv)

    def deleteConversation(self, req: Request, conversation_id: str) -> Response:
        self._conversation(conversation_id)
        self.app.stores.conversations.pop(conversation_id)
        return json_reply({"id": conversation_id, "object": "conversation.deleted",
                           "deleted": True})

    def createConversationItems(self, req: Request, conversation_id: str) -> Response:
        record = self._conversation(conversation_id)
        items = self._new_items(body_json(req).get("items"))
        record["items"].extend(items)
        del record["items"][:-MAX_ITEMS]
        return json_reply({"object": "list", "data": items,
                           "first_id": items[0]["id"] if items else None,
                           "last_id": items[-1]["id"] if items else None, "has_more": False})

    def listConversationItems(self, req: Request, conversation_id: str) -> Response:
        return json_reply(page(self._conversation(conversation_id)["items"],
                               query_params(req)))

    def _item(self, record: dict, item_id: str) -> dict:
        for item in record["items"]:
            if item.get("id") == item_id:
                return item
        raise _not_found("Item", item_id, "item_id")

    def getConversationItem(self, req: Request, conversation_id: str, item_id: str) -> Response:
        return json_reply(self._item(self._conversation(conversation_id), item_id))

    def deleteConversationItem(self, req: Request, conversation_id: str,
                               item_id: str) -> Response:
        record = self._conversation(conversation_id)
        record["items"].remove(self._item(record, item_id))
        return json_reply(record["conversation"])
