"""Operation kinds: each family of operations described once, as data.

Every other module asks the operation's kind what it needs to know (upload limits and artifact
roles, the prompt a person searches for, how usage is reported, the text an answer carries, how
its stream is read, which outputs are kept, the price basis, whether it may be repeated after a
lost attempt, how the admin shows it), so a new operation of the spec is only a registry entry
and a new family is one :class:`Kind` here. Nothing outside this module names an operation id.

A kind's methods take plain data (a parsed body, a list of event payloads) and return plain data:
the recorder turns what they return into field values and artifacts, in one save.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import orjson

# Artifact roles, as stored (``Artifact.Role`` values): kept as strings here so that this
# module stays free of Django and models.
UPLOAD, IMAGE, MASK, AUDIO = "upload", "image", "mask", "audio"
GENERATED_IMAGE, GENERATED_AUDIO = "generated_image", "generated_audio"
FILE_CONTENT, TRANSCRIPT, RESPONSE = "file_content", "transcript", "response"

PROMPT_MAX = 300
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
AUDIO_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/ogg", "aac": "audio/aac",
               "flac": "audio/flac", "pcm": "audio/L16"}
TRANSCRIPT_FORMATS = {"srt": ("srt", "application/x-subrip"), "vtt": ("vtt", "text/vtt")}


@dataclass(frozen=True)
class Output:
    """An output worth keeping as an artifact: bytes to store, or a URL to fetch now."""

    role: str
    index: int = 0
    name: str = ""
    content_type: str = ""
    data: bytes | None = None
    url: str | None = None
    error: str = ""


@dataclass
class Usage:
    """Token counts, however the family reports them (chat's ``prompt_tokens`` or the
    Responses API's ``input_tokens``, with cached and reasoning tokens)."""

    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    cached: int | None = None
    reasoning: int | None = None

    @classmethod
    def read(cls, usage):
        if not isinstance(usage, dict):
            return cls()
        prompt = _count(usage, "prompt_tokens", "input_tokens")
        completion = _count(usage, "completion_tokens", "output_tokens")
        total = _count(usage, "total_tokens")
        if total is None and prompt is not None:
            total = prompt + (completion or 0)
        details_in = _dict(usage.get("prompt_tokens_details") or usage.get("input_tokens_details"))
        details_out = _dict(usage.get("completion_tokens_details")
                            or usage.get("output_tokens_details"))
        return cls(prompt, completion, total, _count(details_in, "cached_tokens"),
                   _count(details_out, "reasoning_tokens"))

    def __bool__(self):
        return any(v is not None for v in (self.prompt, self.completion, self.total))


@dataclass
class Assembled:
    """What a stream carried, read back into the shape of a whole answer."""

    text: str = ""
    usage: Usage | None = None
    body: dict | None = None  # the final object when the stream ends with one (Responses)
    outputs: tuple = ()
    done: bool = False


def _count(data, *names):
    for name in names:
        value = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _dict(value):
    return value if isinstance(value, dict) else {}


def _text(value):
    """Text of a message content: a string, or a list of parts (``text``/``input_text``...).
    Anything else (a number, a dict, parts whose text is not a string) reads as empty."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def _first_text(body, keys):
    for key in keys:
        value = body.get(key)
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            return value
    return ""


def _json(payload):
    try:
        data = orjson.loads(payload)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _b64(value):
    try:
        return base64.b64decode(value, validate=False), ""
    except (ValueError, TypeError) as exc:
        return None, f"bad base64: {exc}"


class Kind:
    """A family of operations. Subclasses override what differs; the defaults fit an
    operation that manages objects (list, retrieve, delete) and answers JSON."""

    name = "objects"
    label = "Objects"
    display = "objects"  # the admin's reading of a call of this kind
    stream_format = "data"  # "data": unnamed data: lines ending [DONE]; "events": named events
    terminal_events = frozenset()  # named events that end a stream well
    upload_limit = "MAX_FILE_BYTES"  # the setting bounding each uploaded file
    upload_roles = {}  # multipart field -> artifact role (default: UPLOAD)
    binary_role = FILE_CONTENT  # role of a non-JSON, non-text answer
    price_basis = "tokens"  # "tokens", "image", "minute", "characters" or None
    creates_objects = False  # a POST creates something upstream: not repeated when lost
    keeps_object_id = True  # the answer's ``id`` names an object worth finding calls by
    ask = False  # a question (generation): replays change nothing upstream

    # -- requests -------------------------------------------------------------------------

    def upload_role(self, field):
        return self.upload_roles.get(field.removesuffix("[]"), UPLOAD)

    def prompt(self, body):
        """The text a person would search for, at most 300 characters."""
        if not isinstance(body, dict):
            return ""
        return _first_text(body, ("prompt", "input", "instruction", "query", "question",
                                  "name"))[:PROMPT_MAX]

    def repeatable(self, operation):
        """Whether an attempt whose fate is unknown may be made again: reads and deletes
        always; a POST unless it creates something upstream (it may have)."""
        return operation.method != "POST" or not self.creates_objects

    def side_effects(self, operation):
        """Whether replaying the call changes something upstream (the confirm page says)."""
        if self.ask:
            return False
        return operation.method in ("POST", "DELETE", "PUT", "PATCH")

    # -- answers --------------------------------------------------------------------------

    def usage(self, body):
        return Usage.read(body.get("usage") if isinstance(body, dict) else None)

    def output_text(self, body):
        return ""

    def outputs(self, body, request):
        """Outputs of a JSON answer to keep as artifacts (``request``: the request body)."""
        return ()

    def text_outputs(self, text, request):
        """Outputs of a text (non-JSON) answer."""
        return ()

    def binary_name(self, request):
        return "content"

    def object_id(self, body, path_kwargs, request):
        """The upstream object the call created or is about, for finding related calls."""
        if not self.keeps_object_id:
            return ""
        if isinstance(body, dict) and isinstance(body.get("id"), str) \
                and body.get("object") != "list":
            return body["id"]
        for value in path_kwargs.values():
            return str(value)
        return ""

    def links(self, body):
        """Other upstream objects the answer names (``{"input_file": "file-…"}``)."""
        return {}

    def assemble(self, events, request=None):
        """Read a stream's event payloads (JSON text) back into an :class:`Assembled`
        (``request``: the request body, where the outputs' names depend on it)."""
        return _assemble_data(events)

    def stream_done(self, events, saw_done):
        if self.stream_format == "data":
            return saw_done
        for payload in reversed(events[-3:]):
            data = _json(payload)
            if data is not None and data.get("type") in self.terminal_events:
                return True
        return False


def _assemble_data(events):
    """Unnamed ``data:`` chunks (chat and completions): the first choice's text and the
    usage of the last chunk that had one."""
    parts, usage = [], None
    for payload in events:
        data = _json(payload)
        if data is None:
            continue
        if data.get("usage"):
            usage = data["usage"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                parts.append(content if isinstance(content, str) else "")
            elif isinstance(choice.get("text"), str):
                parts.append(choice["text"])
    return Assembled("".join(parts), Usage.read(usage))


class Chat(Kind):
    name, label, display = "chat", "Chat", "chat"
    ask = True

    def keeps(self, request):
        return isinstance(request, dict) and request.get("store") is True

    def prompt(self, body):
        if not isinstance(body, dict):
            return ""
        messages = body.get("messages")
        for message in reversed(messages if isinstance(messages, list) else ()):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))[:PROMPT_MAX]
        return ""

    def output_text(self, body):
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            text = _text(message.get("content"))
            calls = message.get("tool_calls")
            if not text and isinstance(calls, list):
                text = " ".join(
                    f"{_dict(c.get('function')).get('name')}"
                    f"({_dict(c.get('function')).get('arguments')})"
                    for c in calls if isinstance(c, dict))
            return text
        return first.get("text") if isinstance(first.get("text"), str) else ""

    def object_id(self, body, path_kwargs, request):
        # Chat completions are objects upstream only when stored (``store: true``).
        if path_kwargs or self.keeps(request):
            return super().object_id(body, path_kwargs, request)
        return ""


class Completion(Chat):
    name, label, display = "completion", "Completion", "completion"
    keeps_object_id = False

    def prompt(self, body):
        return Kind.prompt(self, body)


class Edit(Completion):
    name, label, display = "edit", "Edit", "edit"

    def prompt(self, body):
        if not isinstance(body, dict):
            return ""
        return _first_text(body, ("instruction", "input"))[:PROMPT_MAX]


class Responses(Kind):
    """The Responses API: input items in, output items out, named stream events."""

    name, label, display = "responses", "Responses", "responses"
    stream_format = "events"
    terminal_events = frozenset({"response.completed", "response.failed",
                                 "response.incomplete"})
    ask = True

    def prompt(self, body):
        if not isinstance(body, dict):
            return ""
        value = body.get("input")
        if isinstance(value, str):
            return value[:PROMPT_MAX]
        for item in reversed(value if isinstance(value, list) else ()):
            if isinstance(item, dict) and item.get("role", "user") == "user" \
                    and item.get("type", "message") == "message":
                return _text(item.get("content"))[:PROMPT_MAX]
        return ""

    def output_text(self, body):
        if not isinstance(body, dict):
            return ""
        if isinstance(body.get("output_text"), str):
            return body["output_text"]
        texts, calls = [], []
        for item in body.get("output") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                texts.append(_text(item.get("content")))
            elif item.get("type") == "function_call":
                calls.append(f"{item.get('name')}({item.get('arguments')})")
        return " ".join(t for t in texts if t) or " ".join(calls)

    def outputs(self, body, request):
        # Images made by the image-generation tool come back as base64 in the output items.
        found = []
        for index, item in enumerate(_dict(body).get("output") or ()):
            if isinstance(item, dict) and item.get("type") == "image_generation_call" \
                    and isinstance(item.get("result"), str):
                data, error = _b64(item["result"])
                fmt = item.get("output_format") or "png"
                found.append(Output(GENERATED_IMAGE, index, f"image-{index}.{fmt}",
                                    IMAGE_TYPES.get(fmt, "image/png"), data=data, error=error))
        return found

    def links(self, body):
        body = _dict(body)
        links = {}
        if isinstance(body.get("previous_response_id"), str):
            links["previous_response"] = body["previous_response_id"]
        conversation = body.get("conversation")
        if isinstance(conversation, dict) and isinstance(conversation.get("id"), str):
            links["conversation"] = conversation["id"]
        return links

    def assemble(self, events, request=None):
        parts, final, usage = [], None, None
        for payload in events:
            data = _json(payload)
            if data is None:
                continue
            kind = data.get("type")
            if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
                parts.append(data["delta"])
            elif kind in self.terminal_events or kind in ("response.created",
                                                          "response.in_progress"):
                if isinstance(data.get("response"), dict):
                    final = data["response"]
                    usage = final.get("usage") or usage
        text = "".join(parts)
        if final is not None and final.get("status") != "in_progress":
            text = self.output_text(final) or text
            return Assembled(text, Usage.read(usage), body=final,
                             outputs=tuple(self.outputs(final, None)))
        return Assembled(text, Usage.read(usage))


class Embeddings(Kind):
    name, label, display = "embeddings", "Embeddings", "embedding"
    keeps_object_id = False
    ask = True


class Moderation(Kind):
    name, label, display = "moderation", "Moderation", "moderation"
    keeps_object_id = False
    ask = True


class Images(Kind):
    """Image generation, edits and variations: URLs (dall-e) or base64 (gpt-image-1, always,
    with token usage); streams of partial images."""

    name, label, display = "images", "Images", "image"
    stream_format = "events"
    terminal_events = frozenset({"image_generation.completed", "image_edit.completed"})
    upload_limit = "MAX_IMAGE_BYTES"
    upload_roles = {"image": IMAGE, "mask": MASK}
    price_basis = "image"
    keeps_object_id = False
    ask = True

    def outputs(self, body, request):
        fmt = _dict(body).get("output_format") or _dict(request).get("output_format") or "png"
        found = []
        for index, item in enumerate(_dict(body).get("data") or ()):
            if not isinstance(item, dict):
                continue
            name = f"image-{index}.{fmt}"
            content_type = IMAGE_TYPES.get(fmt, "image/png")
            if isinstance(item.get("b64_json"), str):
                data, error = _b64(item["b64_json"])
                found.append(Output(GENERATED_IMAGE, index, name, content_type, data=data,
                                    error=error))
            elif isinstance(item.get("url"), str):
                found.append(Output(GENERATED_IMAGE, index, name, url=item["url"]))
        return found

    def assemble(self, events, request=None):
        outputs, usage, partials = [], None, 0
        for payload in events:
            data = _json(payload)
            if data is None or not isinstance(data.get("b64_json"), str):
                continue
            fmt = data.get("output_format") or "png"
            content_type = IMAGE_TYPES.get(fmt, "image/png")
            image, error = _b64(data["b64_json"])
            if data.get("type", "").endswith(".completed"):
                usage = data.get("usage") or usage
                index = len([o for o in outputs if not o.name.startswith("partial")])
                outputs.append(Output(GENERATED_IMAGE, index, f"image-{index}.{fmt}",
                                      content_type, data=image, error=error))
            else:
                # Partial images are kept too, after the finals (index 100 and up).
                outputs.append(Output(GENERATED_IMAGE, 100 + partials,
                                      f"partial-{data.get('partial_image_index', partials)}"
                                      f".{fmt}", content_type, data=image, error=error))
                partials += 1
        return Assembled("", Usage.read(usage), outputs=tuple(outputs))


class AudioIn(Kind):
    """Transcriptions and translations: audio in, text out (JSON, text, srt or vtt)."""

    name, label, display = "audio_in", "Audio to text", "audio"
    stream_format = "events"
    terminal_events = frozenset({"transcript.text.done"})
    upload_limit = "MAX_AUDIO_BYTES"
    upload_roles = {"file": AUDIO}
    price_basis = "minute"
    keeps_object_id = False
    ask = True

    def output_text(self, body):
        return body.get("text") if isinstance(_dict(body).get("text"), str) else ""

    def outputs(self, body, request):
        text = self.output_text(body)
        return [Output(TRANSCRIPT, 0, "transcript.txt", "text/plain", data=text.encode())] \
            if text else []

    def text_outputs(self, text, request):
        # The upstream labels srt and vtt as text/plain: the requested format names them.
        requested = _dict(request).get("response_format")
        ext, content_type = TRANSCRIPT_FORMATS.get(requested, ("txt", "text/plain"))
        return [Output(TRANSCRIPT, 0, f"transcript.{ext}", content_type, data=text.encode())]

    def assemble(self, events, request=None):
        parts, usage, final = [], None, None
        for payload in events:
            data = _json(payload)
            if data is None:
                continue
            if data.get("type") == "transcript.text.delta" and isinstance(data.get("delta"),
                                                                          str):
                parts.append(data["delta"])
            elif data.get("type") == "transcript.text.done":
                final = data.get("text") if isinstance(data.get("text"), str) else None
                usage = data.get("usage")
        text = final if final is not None else "".join(parts)
        outputs = (Output(TRANSCRIPT, 0, "transcript.txt", "text/plain", data=text.encode()),)
        return Assembled(text, Usage.read(usage), outputs=outputs if text else ())


class Speech(Kind):
    """Text to speech: the answer is audio bytes (or an ``sse`` stream of base64 chunks)."""

    name, label, display = "speech", "Speech", "speech"
    stream_format = "events"
    terminal_events = frozenset({"speech.audio.done"})
    binary_role = GENERATED_AUDIO
    price_basis = "characters"
    keeps_object_id = False
    ask = True

    def binary_name(self, request):
        fmt = _dict(request).get("response_format") or "mp3"
        return f"speech.{fmt}"

    def assemble(self, events, request=None):
        chunks, usage = [], None
        for payload in events:
            data = _json(payload)
            if data is None:
                continue
            if data.get("type") == "speech.audio.delta" and isinstance(data.get("audio"), str):
                chunk, _ = _b64(data["audio"])
                chunks.append(chunk or b"")
            elif data.get("type") == "speech.audio.done":
                usage = data.get("usage")
        audio = b"".join(chunks)
        fmt = _dict(request).get("response_format") or "mp3"
        outputs = (Output(GENERATED_AUDIO, 0, f"speech.{fmt}",
                          AUDIO_TYPES.get(fmt, "application/octet-stream"), data=audio),) \
            if audio else ()
        return Assembled("", Usage.read(usage), outputs=outputs)


class Files(Kind):
    """Files and everything uploaded or downloaded as a file: uploads and their parts,
    container files, videos, skills, voices. Creating one is never repeated blindly."""

    name, label = "files", "Files"
    upload_roles = {"audio_sample": AUDIO, "input_reference": IMAGE}
    price_basis = None
    creates_objects = True


class Batches(Kind):
    name, label = "batches", "Batches"
    price_basis = None
    creates_objects = True

    def links(self, body):
        body = _dict(body)
        return {role: body[key] for role, key in (("input_file", "input_file_id"),
                                                  ("output_file", "output_file_id"),
                                                  ("error_file", "error_file_id"))
                if isinstance(body.get(key), str) and body[key]}


class FineTuning(Kind):
    """Fine-tuning jobs (and the legacy fine-tunes): their files, events and checkpoints."""

    name, label = "fine_tuning", "Fine-tuning"
    price_basis = None
    creates_objects = True

    def links(self, body):
        body = _dict(body)
        links = {role: body[key] for role, key in (("training_file", "training_file"),
                                                   ("validation_file", "validation_file"),
                                                   ("fine_tuned_model", "fine_tuned_model"))
                 if isinstance(body.get(key), str) and body[key]}
        for index, file_id in enumerate(body.get("result_files") or ()):
            if isinstance(file_id, str):
                links[f"result_file_{index}"] = file_id
        return links


class Listing(Kind):
    """Models, engines and other read-mostly objects."""

    name, label = "listing", "Listing and retrieval"
    price_basis = None


class Unknown(Kind):
    """A path neither spec describes, forwarded as it came (``PASSTHROUGH = "record"``)."""

    name, label = "unknown", "Not in the specs"
    price_basis = None
    keeps_object_id = False

    def stream_done(self, events, saw_done):
        return True  # nothing says how such a stream ends: ending cleanly is ending well

    def assemble(self, events, request=None):
        return Assembled()


KINDS = {kind.name: kind for kind in (
    Chat(), Completion(), Edit(), Responses(), Embeddings(), Moderation(), Images(),
    AudioIn(), Speech(), Files(), Batches(), FineTuning(), Listing(), Unknown(), Kind())}

# Operations whose kind their path does not tell.
_BY_ID = {
    "createChatCompletion": "chat",
    "createCompletion": "completion",
    "createEdit": "edit",
    "createSearch": "completion",
    "createAnswer": "completion",
    "createClassification": "completion",
    "createResponse": "responses",
    "beta_createResponse": "responses",
    "getResponse": "responses",
    "beta_getResponse": "responses",
    "cancelResponse": "responses",
    "beta_cancelResponse": "responses",
    "createEmbedding": "embeddings",
    "createModeration": "moderation",
    "createSpeech": "speech",
    "createTranscription": "audio_in",
    "createTranslation": "audio_in",
    "createVoice": "files",
}

# Path prefixes (under /v1) and the kind of the operations below them, longest first.
_BY_PATH = (
    ("/images/", "images"),
    ("/audio/voices", "files"),
    ("/audio/", "audio_in"),
    ("/files", "files"),
    ("/uploads", "files"),
    ("/containers", "files"),
    ("/videos", "files"),
    ("/skills", "files"),
    ("/batches", "batches"),
    ("/fine_tuning", "fine_tuning"),
    ("/fine-tunes", "fine_tuning"),
    ("/models", "listing"),
    ("/engines", "listing"),
)


@functools.lru_cache(maxsize=1024)
def _kind_name(operation_id, path):
    if operation_id in _BY_ID:
        return _BY_ID[operation_id]
    if operation_id == "passthrough":
        return "unknown"
    for prefix, name in _BY_PATH:
        if path.startswith(prefix):
            return name
    return "objects"


def of(operation):
    """The kind of an operation (a spec ``Operation``, or anything with ``id`` and
    ``path``)."""
    return KINDS[_kind_name(operation.id, operation.path)]


def of_call(call):
    """The kind of a recorded call (its operation id and the spec path it came by)."""
    operation = call.operation_spec
    if operation is not None:
        return of(operation)
    return KINDS["unknown" if call.operation == "passthrough" else "objects"]
