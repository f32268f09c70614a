"""Turning a recorded call into something a person reads: a conversation, images, a transcript.

Everything here returns plain data (strings, dicts, lists) for the templates, which escape all of
it: nothing from a call is ever marked safe. Bodies are shown compacted for display (embedding
vectors and base64 blobs summarised), so a page never carries 1,536 floats or megabytes of
base64; the exact bodies stay downloadable.
"""

import difflib
import json
import re
import sys
from datetime import datetime
from datetime import timezone as dt_timezone

from openai_django import kinds
from openai_django.models import Artifact

# Shown inline as <img>/<audio>; anything else is only ever downloaded as an attachment
# (an SVG or HTML artifact opened inline could run script in the admin's origin).
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
INLINE_AUDIO_PREFIX = "audio/"
SAFE_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")

DISPLAY_JSON_MAX_CHARS = 200_000
VECTOR_PREVIEW = 8
LONG_STRING = 2_000


def kind_of(call):
    """Which reading of the call the page shows (its kind's ``display``)."""
    return kinds.of_call(call).display


# -- JSON for display ---------------------------------------------------------------------------


def for_display(value, _depth=0):
    """A copy of ``value`` fit for a page: long number lists and base64 strings summarised."""
    if isinstance(value, dict):
        return {k: for_display(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > 16 and all(isinstance(v, (int, float)) for v in value[:64]):
            preview = ", ".join(_num(v) for v in value[:VECTOR_PREVIEW])
            return f"[{len(value)} numbers: {preview}, …]"
        return [for_display(v, _depth + 1) for v in value]
    if isinstance(value, str) and len(value) > LONG_STRING:
        if re.fullmatch(r"[A-Za-z0-9+/=\s]+", value[:4096]) or value.startswith("data:"):
            return f"<{len(value)} characters of base64, not shown>"
        return value[:LONG_STRING] + f"… <{len(value) - LONG_STRING} more characters>"
    return value


def _num(value):
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def pretty(value):
    """Indented JSON text of ``value`` compacted for display, or None."""
    if value is None:
        return None
    text = json.dumps(for_display(value), indent=2, ensure_ascii=False, default=str)
    if len(text) > DISPLAY_JSON_MAX_CHARS:
        text = text[:DISPLAY_JSON_MAX_CHARS] + "\n… (truncated for display: download the body)"
    return text


def pretty_scalar(value):
    if isinstance(value, (dict, list)):
        return json.dumps(for_display(value), ensure_ascii=False, default=str)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- chat ---------------------------------------------------------------------------------------


# Content parts that carry text: chat's ``text``, the Responses API's input and output text.
TEXT_PARTS = ("text", "input_text", "output_text", "summary_text")


def _parts(content):
    """Message content as display parts: [{"type": "text", "text"} | {"type": "image", ...}]."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                parts.append({"type": "text", "text": pretty_scalar(part)})
                continue
            kind = part.get("type")
            if kind in TEXT_PARTS or "text" in part and kind is None:
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "refusal":
                parts.append({"type": "text", "text": str(part.get("refusal", ""))})
            elif kind == "input_image" and not part.get("image_url"):
                parts.append({"type": "image", "url": str(part.get("file_id") or "")})
            elif kind in ("image_url", "input_image"):
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                url = str(url or "")
                if SAFE_DATA_URL.match(url[:200]) and SAFE_DATA_URL.match(url):
                    parts.append({"type": "image", "data_url": url,
                                  "label": f"inline image, {len(url)} characters"})
                else:
                    # Remote images are never loaded by the admin page (privacy, no internet):
                    # the URL is shown as text.
                    parts.append({"type": "image", "url": url[:500]})
            else:
                parts.append({"type": "other", "text": pretty(part)})
        return parts
    return [{"type": "text", "text": pretty_scalar(content)}]


def _tool_calls(message):
    calls = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        calls.append({"id": call.get("id", ""), "type": call.get("type", "function"),
                      "name": function.get("name", ""),
                      "arguments": _pretty_arguments(function.get("arguments"))})
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        calls.append({"id": "", "type": "function_call", "name": function_call.get("name", ""),
                      "arguments": _pretty_arguments(function_call.get("arguments"))})
    return calls


def _pretty_arguments(arguments):
    """Function-call arguments are a JSON string: indent it when it parses."""
    if isinstance(arguments, str):
        try:
            return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        except ValueError:
            return arguments
    return pretty(arguments) or ""


def _message(message):
    if not isinstance(message, dict):
        return {"role": "?", "parts": [{"type": "text", "text": pretty_scalar(message)}]}
    return {
        "role": str(message.get("role") or "?"),
        "name": message.get("name") or "",
        "parts": _parts(message.get("content")),
        "tool_calls": _tool_calls(message),
        "tool_call_id": message.get("tool_call_id") or "",
        "refusal": message.get("refusal") or "",
    }


def conversation(call):
    """The messages the client sent, in order."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    return [_message(m) for m in body.get("messages") or ()]


def tools_offered(call):
    """Names and descriptions of the tools/functions the request offered the model."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    offered = _tools(body.get("tools"))
    for function in body.get("functions") or ():
        if isinstance(function, dict):
            offered.append({"name": function.get("name", ""),
                            "description": function.get("description", ""),
                            "parameters": pretty(function.get("parameters"))})
    return offered


def chat_replies(call):
    """The assistant's answer(s): from the response body, or assembled from the stream."""
    body = call.response_body if isinstance(call.response_body, dict) else None
    replies = []
    if body and isinstance(body.get("choices"), list):
        for choice in body["choices"]:
            if not isinstance(choice, dict):
                continue
            message = _message(choice.get("message") or {"role": "assistant", "content": ""})
            message["finish_reason"] = choice.get("finish_reason") or ""
            message["index"] = choice.get("index", 0)
            replies.append(message)
        return replies
    events = events_of(call)
    if events:
        return assemble_chat_stream(events)
    if call.output_text:
        return [{"role": "assistant", "parts": _parts(call.output_text), "tool_calls": [],
                 "finish_reason": "", "index": 0}]
    return []


def events_of(call):
    """The data payloads of a streamed answer: the recorded events, or those of an event stream
    kept as text (a background call whose body asked for ``stream: true``)."""
    if call.stream_events:
        return call.stream_events
    if call.response_text and (call.response_content_type or "").startswith("text/event-stream"):
        payloads = []
        for line in call.response_text.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data and data != "[DONE]":
                    payloads.append(data)
        return payloads
    return []


def assemble_chat_stream(events):
    """Rebuild the assistant message(s) of a streamed chat: text and tool calls from deltas."""
    choices = {}
    for payload in events:
        try:
            data = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = choices.setdefault(index, {"role": "assistant", "text": [], "tools": {},
                                               "finish_reason": ""})
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                continue
            if delta.get("role"):
                state["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                state["text"].append(delta["content"])
            for tool in delta.get("tool_calls") or ():
                if not isinstance(tool, dict):
                    continue
                slot = state["tools"].setdefault(tool.get("index", 0),
                                                 {"id": "", "name": "", "arguments": []})
                slot["id"] = tool.get("id") or slot["id"]
                function = tool.get("function") or {}
                slot["name"] = function.get("name") or slot["name"]
                if isinstance(function.get("arguments"), str):
                    slot["arguments"].append(function["arguments"])
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]
    replies = []
    for index in sorted(choices):
        state = choices[index]
        replies.append({
            "role": state["role"], "name": "", "index": index,
            "parts": _parts("".join(state["text"])) if state["text"] else [],
            "tool_calls": [{"id": t["id"], "type": "function", "name": t["name"],
                            "arguments": _pretty_arguments("".join(t["arguments"]))}
                           for _i, t in sorted(state["tools"].items())],
            "tool_call_id": "", "refusal": "",
            "finish_reason": state["finish_reason"],
        })
    return replies


# -- the Responses API -----------------------------------------------------------------------


def _payload(event):
    """A stream event's payload as a dict (stored as JSON text, or already parsed)."""
    if isinstance(event, dict):
        return event
    try:
        data = json.loads(event)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _item(item, reply=False):
    """One input or output item of the Responses API as a message for the templates."""
    if not isinstance(item, dict):
        return _message({"role": "user", "content": item})
    kind = item.get("type") or "message"
    if kind == "message":
        message = _message({"role": item.get("role") or "user", "content": item.get("content")})
        message["status"] = item.get("status") or ""
        return message
    if kind == "function_call":
        return {"role": "assistant", "kind": kind, "parts": [], "tool_call_id": "",
                "tool_calls": [{"id": item.get("call_id") or item.get("id") or "",
                                "type": "function", "name": item.get("name") or "",
                                "arguments": _pretty_arguments(item.get("arguments"))}]}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "kind": kind, "tool_calls": [],
                "tool_call_id": item.get("call_id") or "",
                "parts": _parts(_pretty_arguments(output) if isinstance(output, str)
                                else output)}
    if kind == "reasoning":
        summary = [str(p.get("text", "")) for p in item.get("summary") or ()
                   if isinstance(p, dict)]
        return {"role": "reasoning", "kind": kind, "summary": summary, "parts": [],
                "tool_calls": [], "encrypted": bool(item.get("encrypted_content"))}
    if kind == "image_generation_call":
        return {"role": "assistant", "kind": kind, "tool_calls": [], "parts": [
            {"type": "other", "text": pretty({k: v for k, v in item.items() if k != "result"})}]}
    return {"role": "assistant" if reply else "user", "kind": kind, "tool_calls": [],
            "parts": [{"type": "other", "text": pretty(item)}]}


def response_object(call):
    """The ``response`` object of a Responses call: its body, else the one its stream ended
    with; ``(response, complete)``. A broken stream gives the output items it finished and
    the text it had begun (``complete`` False)."""
    body = call.response_body
    if isinstance(body, dict) and body.get("object") == "response":
        return body, True
    events = events_of(call)
    if not events:
        return None, True
    assembled = kinds.of_call(call).assemble(events)
    if isinstance(assembled.body, dict):
        return assembled.body, True
    done, started = [], None
    for event in events:
        data = _payload(event) or {}
        if data.get("type") == "response.output_item.done" and isinstance(data.get("item"), dict):
            done.append(data["item"])
        elif data.get("type") in ("response.created", "response.in_progress") and \
                isinstance(data.get("response"), dict):
            started = data["response"]
    if assembled.text and not any(i.get("type") == "message" for i in done):
        done.append({"type": "message", "role": "assistant", "status": "incomplete",
                     "content": [{"type": "output_text", "text": assembled.text}]})
    return {**(started or {}), "output": done, "status": "incomplete"}, False


def response_usage(usage):
    """Token counts of a Responses ``usage`` (with cached and reasoning tokens), or None."""
    read = kinds.Usage.read(usage)
    if not read:
        return None
    return {"input": read.prompt, "output": read.completion, "total": read.total,
            "cached": read.cached, "reasoning": read.reasoning}


def responses_view(call):
    """A Responses call as a conversation: instructions, input items, output items, usage."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    response, complete = response_object(call)
    response = response or {}
    conversation = []
    instructions = body.get("instructions") or response.get("instructions")
    if instructions:
        message = _message({"role": "system", "content": instructions})
        message["name"] = "instructions"
        conversation.append(message)
    value = body.get("input")
    if isinstance(value, str):
        conversation.append(_message({"role": "user", "content": value}))
    elif isinstance(value, list):
        conversation.extend(_item(item) for item in value)
    output = [_item(item, reply=True) for item in response.get("output") or ()]
    return {
        "conversation": conversation,
        "output": output,
        "status": response.get("status") or "",
        "complete": complete,
        "response_id": response.get("id") or "",
        "incomplete": (response.get("incomplete_details") or {}).get("reason", "")
        if isinstance(response.get("incomplete_details"), dict) else "",
        "usage": response_usage(response.get("usage")),
        "tools": tools_offered(call) or _tools(response.get("tools")),
    }


def _tools(tools):
    offered = []
    for tool in tools or ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        offered.append({"name": function.get("name") or tool.get("type", ""),
                        "description": function.get("description", ""),
                        "parameters": pretty(function.get("parameters"))})
    return offered


# -- speech -----------------------------------------------------------------------------------


def speech_request(call):
    """The input text and voice of a speech call (``voice`` is a name or ``{"id"}``)."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    voice = body.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id") or pretty_scalar(voice)
    return {"input": str(body.get("input") or ""), "voice": str(voice or ""),
            "instructions": str(body.get("instructions") or ""),
            "format": str(body.get("response_format") or "mp3")}


# -- completions, edits ---------------------------------------------------------------------


def prompts(call):
    """The prompt(s) of a completion: a list of strings (token arrays shown as JSON)."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    prompt = body.get("prompt")
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return prompt
    return [pretty_scalar(prompt)]


def text_choices(call):
    body = call.response_body if isinstance(call.response_body, dict) else None
    if body and isinstance(body.get("choices"), list):
        return [{"index": c.get("index", i), "text": str(c.get("text", "")),
                 "finish_reason": c.get("finish_reason") or ""}
                for i, c in enumerate(body["choices"]) if isinstance(c, dict)]
    if call.output_text:
        return [{"index": 0, "text": call.output_text, "finish_reason": ""}]
    events = events_of(call)
    if events:
        text = kinds.of_call(call).assemble(events).text
        return [{"index": 0, "text": text, "finish_reason": ""}]
    return []


# -- embeddings, moderations ------------------------------------------------------------------


def embedding_inputs(call):
    body = call.request_body if isinstance(call.request_body, dict) else {}
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return value
        return [pretty_scalar(value)]
    return []


def embeddings(call):
    """One row per vector: index, dimensions and the first few values (never the whole)."""
    body = call.response_body if isinstance(call.response_body, dict) else {}
    rows = []
    for i, item in enumerate(body.get("data") or ()):
        if not isinstance(item, dict):
            continue
        vector = item.get("embedding")
        if isinstance(vector, dict) and "base64_chars" in vector:  # compacted base64
            dims = _base64_floats(vector["base64_chars"])
            vector = _decode_floats(str(vector.get("preview") or ""))
            preview, norm = vector[:VECTOR_PREVIEW], None
        elif isinstance(vector, str):  # encoding_format=base64 (what today's SDKs ask for)
            vector = _decode_floats(vector)
            dims, preview = len(vector), vector[:VECTOR_PREVIEW]
            norm = sum(v * v for v in vector) ** .5
        elif isinstance(vector, list):
            dims, preview = len(vector), vector[:VECTOR_PREVIEW]
            norm = sum(float(v) * float(v) for v in vector if isinstance(v, (int, float))) ** .5
        elif isinstance(vector, dict):  # compacted by the recorder
            dims, preview, norm = vector.get("dimensions"), vector.get("preview") or [], None
        else:
            dims, preview, norm = None, [], None
        rows.append({
            "index": item.get("index", i), "dimensions": dims,
            "preview": ", ".join(_num(v) if isinstance(v, (int, float)) else str(v)
                                 for v in preview),
            "norm": f"{norm:.4f}" if norm else "",
        })
    return rows


def _decode_floats(text):
    """Little-endian float32 values of a base64 embedding (as much of it as is whole)."""
    import base64
    from array import array

    text = text.strip()
    text = text[: len(text) - len(text) % 4]
    try:
        raw = base64.b64decode(text, validate=False)
    except ValueError:
        return []
    values = array("f")
    values.frombytes(raw[: len(raw) - len(raw) % 4])
    if sys.byteorder == "big":
        values.byteswap()
    return [float(v) for v in values]


def _base64_floats(chars):
    """How many float32 values ``chars`` characters of padded base64 hold."""
    try:
        return int(chars) * 3 // 4 // 4
    except (TypeError, ValueError):
        return None


def moderation_results(call):
    body = call.response_body if isinstance(call.response_body, dict) else {}
    inputs = embedding_inputs(call)
    results = []
    for i, result in enumerate(body.get("results") or ()):
        if not isinstance(result, dict):
            continue
        categories = result.get("categories") or {}
        scores = result.get("category_scores") or {}
        rows = sorted(
            ({"name": name, "flagged": bool(categories.get(name)),
              "score": scores.get(name) if isinstance(scores.get(name), (int, float)) else None}
             for name in set(categories) | set(scores)),
            key=lambda r: -(r["score"] or 0),
        )
        for row in rows:
            row["percent"] = f"{row['score'] * 100:.1f}" if row["score"] is not None else ""
            row["bar"] = max(0.0, min(100.0, (row["score"] or 0) * 100))
        results.append({"input": inputs[i] if i < len(inputs) else "",
                        "flagged": bool(result.get("flagged")), "categories": rows})
    return results


# -- audio ------------------------------------------------------------------------------------


def transcript(call):
    """The transcript text and, for verbose_json, its timed segments."""
    body = call.response_body if isinstance(call.response_body, dict) else {}
    text = call.output_text or call.response_text or body.get("text") or ""
    segments = []
    for segment in body.get("segments") or ():
        if isinstance(segment, dict):
            segments.append({"start": _seconds(segment.get("start")),
                             "end": _seconds(segment.get("end")),
                             "text": str(segment.get("text", ""))})
    return {"text": text, "segments": segments, "language": body.get("language") or "",
            "duration": body.get("duration")}


def _seconds(value):
    if not isinstance(value, (int, float)):
        return ""
    minutes, seconds = divmod(float(value), 60)
    return f"{int(minutes)}:{seconds:05.2f}"


# -- files, fine-tunes, models: tables -------------------------------------------------------

TIME_KEYS = {"created", "created_at", "updated_at", "finished_at", "expires_at"}
MAX_COLUMNS = 9


def _cell(key, value):
    if key in TIME_KEYS and isinstance(value, (int, float)) and value > 0:
        return datetime.fromtimestamp(value, tz=dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        text = pretty_scalar(value)
        return text if len(text) <= 120 else text[:117] + "…"
    return pretty_scalar(value)


def table_of(items):
    """``{"columns", "rows"}`` for a list of objects: the scalar keys of the first items."""
    items = [item for item in items if isinstance(item, dict)]
    if not items:
        return None
    columns = []
    for item in items[:20]:
        for key, value in item.items():
            if key not in columns and not isinstance(value, (dict, list)):
                columns.append(key)
    columns = columns[:MAX_COLUMNS]
    rows = [[_cell(key, item.get(key)) if key in item else "" for key in columns]
            for item in items]
    if any(isinstance(item.get("content"), list) or "arguments" in item for item in items):
        # Items of a conversation or a response (input_items): their text is the point.
        columns.append("text")
        for row, item in zip(rows, items, strict=True):
            row.append(_item_text(item))
    return {"columns": columns, "rows": rows}


def _item_text(item):
    """The text of a Responses item for a table cell: message text, a call, its output."""
    if isinstance(item.get("content"), list):
        text = " ".join(str(p.get("text", "")) for p in item["content"]
                        if isinstance(p, dict) and p.get("type") in TEXT_PARTS)
    elif "arguments" in item:
        text = f"{item.get('name', '')}({item.get('arguments', '')})"
    else:
        text = pretty_scalar(item.get("output", ""))
    return text if len(text) <= 500 else text[:499] + "…"


def object_tables(call):
    """The response of a files/fine-tunes/models/engines call as tables.

    A list (``data``) becomes one table; a single object becomes a key/value table, and each of
    its lists of objects (fine-tune events, training files...) a table of its own.
    """
    body = call.response_body
    tables = []
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        table = table_of(body["data"])
        if table:
            count = len(body["data"])
            first = body["data"][0] if isinstance(body["data"][0], dict) else {}
            noun = str(first.get("object") or "item").replace(".", " ").replace("_", " ")
            table["title"] = f"{count} {noun}{'' if count == 1 else 's'}"
            tables.append(table)
        return {"fields": [], "tables": tables}
    if isinstance(body, dict) and "error" not in body:
        fields = [(key, _cell(key, value)) for key, value in body.items()
                  if not (isinstance(value, list) and value and isinstance(value[0], dict))]
        for key, value in body.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                table = table_of(value)
                if table:
                    table["title"] = key.replace("_", " ")
                    tables.append(table)
        return {"fields": fields, "tables": tables}
    return {"fields": [], "tables": tables}


def request_fields(call, skip=("messages", "prompt", "input", "tools", "functions")):
    """The request's other parameters (model, temperature...) as key/value pairs."""
    body = call.request_body if isinstance(call.request_body, dict) else {}
    return [(key, pretty_scalar(value)) for key, value in body.items() if key not in skip]


# -- artifacts ---------------------------------------------------------------------------------


def artifact_view(artifact):
    content_type = (artifact.content_type or "").split(";")[0].strip().lower()
    stored = bool(artifact.file) and not artifact.purged_at
    return {
        "obj": artifact,
        "stored": stored,
        "is_image": stored and content_type in INLINE_IMAGE_TYPES,
        "is_audio": stored and content_type.startswith(INLINE_AUDIO_PREFIX),
        "is_input": artifact.role in Artifact.INPUT_ROLES,
    }


# -- comparing two calls -----------------------------------------------------------------------

TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)
DIFF_MAX_CHARS = 40_000


def comparable_text(call):
    """What to diff for a call: the text its kind reads from the answer (or from the stream),
    else its response as indented JSON."""
    if call.output_text:
        return call.output_text
    kind = kinds.of_call(call)
    if isinstance(call.response_body, dict):
        text = kind.output_text(call.response_body)
        if text:
            return text
    events = events_of(call)
    if events:
        assembled = kind.assemble(events)
        text = assembled.text or (kind.output_text(assembled.body) if assembled.body else "")
        if not text and kind.display == "chat":  # a streamed answer of tool calls only
            replies = assemble_chat_stream(events)
            text = "".join(f"{t['name']}({t['arguments']})\n"
                           for t in (replies[0]["tool_calls"] if replies else ()))
        return text
    if call.response_text:
        return call.response_text
    if call.response_body is not None:
        return pretty(call.response_body) or ""
    if call.error:
        return pretty(call.error) or ""
    return ""


def word_diff(a, b):
    """``(segments, ratio)``: segments are ``(op, text)`` with op in equal/insert/delete."""
    a, b = a[:DIFF_MAX_CHARS], b[:DIFF_MAX_CHARS]
    left, right = TOKEN.findall(a), TOKEN.findall(b)
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    segments = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            segments.append(("equal", "".join(left[i1:i2])))
            continue
        if tag in ("delete", "replace"):
            segments.append(("delete", "".join(left[i1:i2])))
        if tag in ("insert", "replace"):
            segments.append(("insert", "".join(right[j1:j2])))
    return segments, matcher.ratio()


def similarity(a, b):
    """A quick similarity ratio (0..1) of two texts, for the bulk comparison table."""
    if not a and not b:
        return 1.0
    left, right = TOKEN.findall(a[:8000]), TOKEN.findall(b[:8000])
    return difflib.SequenceMatcher(None, left, right).ratio()


def parameter_changes(a, b):
    """Top-level request parameters that differ between two calls: [(name, a, b)]."""
    left = a.request_body if isinstance(a.request_body, dict) else {}
    right = b.request_body if isinstance(b.request_body, dict) else {}
    changes = []
    for key in list(left) + [k for k in right if k not in left]:
        if left.get(key, ...) != right.get(key, ...):
            changes.append((key,
                            pretty_scalar(left[key]) if key in left else "—",
                            pretty_scalar(right[key]) if key in right else "—"))
    return changes
