"""Today's audio and image behaviour (spec 2.3.0) on top of the 2023 handlers.

* ``POST /audio/speech``: audio bytes of ``response_format`` (a valid WAV for ``wav``, raw
  16-bit PCM for ``pcm``, bytes shaped like mp3/opus/aac/flac otherwise), about 0.35 s per
  input word, at most ``fakes.MAX_AUDIO_SECONDS``; ``stream_format: "sse"`` answers
  ``speech.audio.delta`` events (base64 audio) then ``speech.audio.done`` with usage.
* ``POST /audio/transcriptions`` with a ``gpt-4o*`` model: token usage on the JSON answer and,
  with the multipart field ``stream=true``, ``transcript.text.delta`` ... ``transcript.text.done``.
* ``gpt-image-*`` generations and edits: always ``b64_json`` with ``usage``; ``stream: true``
  with ``partial_images`` (0..``MAX_PARTIAL_IMAGES``) answers ``image_generation.partial_image``
  (``image_edit.partial_image``) events, then ``image_generation.completed``
  (``image_edit.completed``).  Edits take several ``image[]`` files.  dall-e is unchanged.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from . import fakes
from .http11 import Response, loads
from .operations import (
    ApiError,
    EventSequence,
    StreamPlan,
    _int,
    _truthy,
    body_json,
    form_data,
    json_reply,
)
from .state import MAX_PARTIAL_IMAGES, clamp_int

if TYPE_CHECKING:  # pragma: no cover
    from .app import StandinApp
    from .http11 import Request

#: The longest ``input`` speech accepts (the real API's limit, in characters).
MAX_SPEECH_INPUT = 4096
#: Output tokens of one gpt-image picture by quality (1024x1024), as the real API bills them.
IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
#: Input tokens an input image costs in an edit.
EDIT_IMAGE_TOKENS = 194


def _chunks(data: bytes, n: int) -> list[bytes]:
    n = max(1, min(n, len(data) or 1))
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)] or [b""]


class MediaOps:
    """Speech, streamed transcriptions and gpt-image; everything else goes to ``app.ops``."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    # -- speech ------------------------------------------------------------------------------

    def createSpeech(self, req: Request) -> Any:
        body = body_json(req)
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "'input' is a required property.", param="input")
        if len(text) > MAX_SPEECH_INPUT:
            raise ApiError(400, f"'input' is too long: at most {MAX_SPEECH_INPUT} characters.",
                           param="input", code="string_above_max_length")
        if not body.get("voice"):
            raise ApiError(400, "'voice' is a required property.", param="voice")
        fmt = body.get("response_format") or "mp3"
        if fmt not in fakes.AUDIO_TYPES:
            raise ApiError(400, f"'{fmt}' is not one of {sorted(fakes.AUDIO_TYPES)} - "
                                "'response_format'", param="response_format")
        model = str(body.get("model") or "gpt-4o-mini-tts")
        try:
            speed = min(4.0, max(0.25, float(body.get("speed") or 1.0)))
        except (TypeError, ValueError):
            raise ApiError(400, "'speed' must be a number.", param="speed") from None
        seconds = fakes.speech_seconds(text) / speed
        seed = fakes.digest("speech", model, body.get("voice"), text)
        data = fakes.audio(fmt, seconds, seed)
        if body.get("stream_format") != "sse":
            return Response(200, data, fakes.AUDIO_TYPES[fmt], [("openai-model", model)])
        events, ttft, gap = self.app.knobs(req)
        seq = EventSequence(numbered=False)
        for piece in _chunks(data, events):
            seq.add("speech.audio.delta", audio=base64.b64encode(piece).decode())
        input_tokens = fakes.count_tokens(text)
        output_tokens = max(1, int(seconds * 20))
        seq.add("speech.audio.done", usage={"input_tokens": input_tokens,
                                            "output_tokens": output_tokens,
                                            "total_tokens": input_tokens + output_tokens})
        return StreamPlan(seq.events, model, ttft, gap, named=True)

    # -- transcriptions ----------------------------------------------------------------------

    def createTranscription(self, req: Request) -> Any:
        fields, files = form_data(req)
        model = fields.get("model") or "whisper-1"
        answer = self.app.ops.createTranscription(req)
        if not model.startswith("gpt-4o") or answer.status != 200:
            return answer
        upload = next(f for f in files if f.field == "file")
        audio_tokens = max(1, int(fakes.audio_duration(upload.size) * 10))
        text_tokens = fakes.count_tokens(fields.get("prompt", ""))
        stream = _truthy(fields.get("stream", "false"))
        if not answer.content_type.startswith("application/json") and not stream:
            return answer
        text = (loads(answer.body)["text"] if answer.content_type.startswith("application/json")
                else answer.body.decode().strip())
        output_tokens = fakes.count_tokens(text)
        usage = {"type": "tokens", "input_tokens": audio_tokens + text_tokens,
                 "input_token_details": {"text_tokens": text_tokens,
                                         "audio_tokens": audio_tokens},
                 "output_tokens": output_tokens,
                 "total_tokens": audio_tokens + text_tokens + output_tokens}
        if not stream:
            result = loads(answer.body)
            result["usage"] = usage
            return json_reply(result, model)
        events, ttft, gap = self.app.knobs(req)
        seq = EventSequence(numbered=False)
        for piece in fakes.split_text(text, events):
            seq.add("transcript.text.delta", delta=piece)
        seq.add("transcript.text.done", text=text, usage=usage)
        return StreamPlan(seq.events, model, ttft, gap, named=True)

    # -- gpt-image -----------------------------------------------------------------------------

    def createImage(self, req: Request) -> Any:
        body = body_json(req)
        model = str(body.get("model") or "")
        if not model.startswith("gpt-image"):
            return self.app.ops.createImage(req)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' is a required property.", param="prompt")
        return self._gpt_image(req, "image_generation", model, prompt, body, [])

    def createImageEdit(self, req: Request) -> Any:
        fields, files = form_data(req)
        model = fields.get("model") or ""
        if not model.startswith("gpt-image"):
            return self.app.ops.createImageEdit(req)
        images = [f for f in files if f.field in ("image", "image[]")]
        if not images:
            raise ApiError(400, "'image' is a required property.", param="image")
        prompt = fields.get("prompt", "")
        if not prompt:
            raise ApiError(400, "'prompt' is a required property.", param="prompt")
        return self._gpt_image(req, "image_edit", model, prompt, fields,
                               [f.sha256 for f in images])

    def _gpt_image(self, req: Request, kind: str, model: str, prompt: str, params: dict,
                   inputs: list[str]) -> Any:
        n = _int(params.get("n"), 1, "n", high=10)
        size = params.get("size") or "auto"
        width, height = fakes.parse_size(size if size != "auto" else "1024x1024", cap=1536)
        size = f"{width}x{height}"
        quality = str(params.get("quality") or "auto")
        background = str(params.get("background") or "auto")
        output_format = str(params.get("output_format") or "png")
        created = int(time.time())
        images = []
        for i in range(n):
            seed = fakes.digest(kind, model, prompt, *inputs, i)
            images.append(base64.b64encode(fakes.png(width, height, fakes.colour(seed)))
                          .decode())
        text_tokens = fakes.count_tokens(prompt)
        image_tokens = EDIT_IMAGE_TOKENS * len(inputs)
        output_tokens = IMAGE_TOKENS.get(quality, IMAGE_TOKENS["auto"]) * n
        usage = {"input_tokens": text_tokens + image_tokens, "output_tokens": output_tokens,
                 "total_tokens": text_tokens + image_tokens + output_tokens,
                 "input_tokens_details": {"text_tokens": text_tokens,
                                          "image_tokens": image_tokens}}
        shape = {"background": background, "output_format": output_format,
                 "quality": quality, "size": size}
        if not _truthy(params.get("stream", False)):
            return json_reply({"created": created, "data": [{"b64_json": b} for b in images],
                               **shape, "usage": usage}, model)
        partials = clamp_int(params.get("partial_images"), 0, 0, MAX_PARTIAL_IMAGES)
        _, ttft, gap = self.app.knobs(req)
        seq = EventSequence(numbered=False)
        for k in range(partials):
            seed = fakes.digest(kind, "partial", model, prompt, *inputs, k)
            partial = fakes.png(max(1, width // 4), max(1, height // 4), fakes.colour(seed))
            seq.add(f"{kind}.partial_image", b64_json=base64.b64encode(partial).decode(),
                    created_at=created, partial_image_index=k, **shape)
        seq.add(f"{kind}.completed", b64_json=images[0], created_at=created, **shape,
                usage=usage)
        return StreamPlan(seq.events, model, ttft, gap, named=True)
