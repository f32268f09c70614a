"""Deterministic fake content: text, token counts, PNG images, embeddings, moderation scores.

Everything here is a pure function of its input (seeded with SHA-256), so a test can send the
same request twice and get the same text, and can assert on the quote of its own prompt that
every reply carries.  Token counts are whitespace-separated words: rough, but different inputs
give different counts, which is what usage accounting in the gateway needs to be tested.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

WORDS = (
    "amber", "anchor", "arrow", "aspen", "basil", "beacon", "birch", "breeze", "brook",
    "canyon", "cedar", "cinder", "clover", "comet", "coral", "crystal", "dawn", "delta",
    "drift", "dune", "ember", "fable", "falcon", "fern", "fjord", "flint", "garnet", "glade",
    "granite", "harbor", "hazel", "heron", "island", "ivory", "jasper", "juniper", "lagoon",
    "lantern", "lark", "linen", "maple", "meadow", "mesa", "meteor", "mist", "nectar", "nimbus",
    "oasis", "onyx", "orbit", "pebble", "pine", "prairie", "quartz", "quill", "raven", "reef",
    "ridge", "river", "saffron", "sierra", "slate", "spruce", "summit",
)


def digest(*parts: Any) -> bytes:
    """SHA-256 over a canonical rendering of ``parts`` (strings, bytes or JSON-able data)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part)
        elif isinstance(part, str):
            h.update(part.encode("utf-8", "surrogatepass"))
        elif isinstance(part, int):
            h.update(str(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.digest()


def _stream_bytes(seed: bytes, n: int) -> bytes:
    if n <= len(seed):
        return seed[:n]
    return hashlib.shake_256(seed).digest(n)


def phrase(seed: bytes, min_words: int = 8, max_words: int = 15) -> str:
    """A hash-seeded phrase of 8-15 words, e.g. ``"Cedar orbit mist ..."``."""
    count = min_words + seed[0] % (max_words - min_words + 1)
    picks = _stream_bytes(seed[1:] + seed[:1], count)
    words = [WORDS[b % len(WORDS)] for b in picks]
    words[0] = words[0].capitalize()
    return " ".join(words)


def count_tokens(text: str) -> int:
    """Rough token count: whitespace-separated words (at least 1 for non-empty text)."""
    if not text:
        return 0
    return len(text.split())


def quote(text: str, max_words: int = 8) -> str:
    """The first few words of ``text`` on one line, with an ellipsis if cut."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + "..."


def truncate_words(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to ``limit`` tokens; returns (text, was_cut)."""
    words = text.split(" ")
    if count_tokens(text) <= limit:
        return text, False
    kept: list[str] = []
    n = 0
    for word in words:
        if word:
            if n >= limit:
                break
            n += 1
        kept.append(word)
    return " ".join(kept), True


def split_text(text: str, n: int) -> list[str]:
    """Split ``text`` into ``n`` pieces at spaces so that ``"".join(pieces) == text``.

    Streams use this so that the concatenated deltas are exactly the non-streamed text.
    """
    if n <= 1:
        return [text]
    bounds = [i for i, ch in enumerate(text) if ch == " " and i > 0]
    m = len(bounds)
    if m >= n - 1:
        cuts = [bounds[(k + 1) * m // n] for k in range(n - 1)]
    else:
        cuts = bounds + [len(text)] * (n - 1 - m)
    starts = [0] + cuts
    ends = cuts + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends)]


# -- images ---------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def colour(seed: bytes) -> tuple[int, int, int]:
    return seed[0], seed[1], seed[2]


def parse_size(size: Any, default: int = 1024, cap: int = 2048) -> tuple[int, int]:
    """``"256x256"`` -> (256, 256); anything odd falls back to a square ``default``."""
    if isinstance(size, str):
        w, sep, h = size.lower().partition("x")
        if sep and w.isdigit() and h.isdigit():
            return max(1, min(int(w), cap)), max(1, min(int(h), cap))
    return default, default


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


@lru_cache(maxsize=128)
def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid, solid-colour RGB PNG (cached: sizes repeat a lot)."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b""))


# -- embeddings -------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def embedding(key: bytes, dimensions: int) -> tuple[float, ...]:
    """A unit-length pseudo-random vector derived from ``key``."""
    raw = array("h")
    raw.frombytes(hashlib.shake_256(key).digest(2 * dimensions))
    if sys.byteorder == "big":
        raw.byteswap()
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return tuple(v / norm for v in raw)


def embedding_base64(vector: Iterable[float]) -> str:
    """Little-endian float32, base64: what the API sends for ``encoding_format=base64``."""
    arr = array("f", vector)
    if sys.byteorder == "big":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


# -- moderation -------------------------------------------------------------------------------

MODERATION_CATEGORIES = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "self-harm",
    "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)

_TRIGGERS = {
    "violence": ("kill", "murder", "attack", "shoot", "stab", "hurt"),
    "violence/graphic": ("gore", "blood"),
    "hate": ("hate",),
    "harassment": ("idiot", "stupid", "loser"),
    "self-harm": ("suicide", "self-harm"),
    "sexual": ("sex", "nude", "explicit"),
}
_WORD_RE = re.compile(r"[a-z\-]+")


def moderation_result(text: str) -> dict:
    """Scores: tiny hash-derived noise, pushed high by a few trigger words."""
    seed = digest("moderation", text)
    words = set(_WORD_RE.findall(text.lower()))
    scores: dict[str, float] = {}
    for i, cat in enumerate(MODERATION_CATEGORIES):
        base = (seed[i] / 255.0) * 0.01
        if words.intersection(_TRIGGERS.get(cat, ())):
            base = 0.9 + (seed[i] / 255.0) * 0.09
        scores[cat] = round(base, 6)
    if scores["violence"] > 0.5 and words.intersection(("them", "you", "him", "her")):
        scores["hate/threatening"] = max(scores["hate/threatening"], 0.6)
        scores["harassment/threatening"] = max(scores["harassment/threatening"], 0.6)
    categories = {cat: score > 0.5 for cat, score in scores.items()}
    return {"flagged": any(categories.values()), "categories": categories,
            "category_scores": scores}


# -- audio ------------------------------------------------------------------------------------


def audio_duration(size: int) -> float:
    """Pretend audio runs at 16 kB per second (so bigger uploads are longer)."""
    return round(max(0.1, size / 16000.0), 2)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(text: str, duration: float) -> str:
    return f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n"


def vtt(text: str, duration: float) -> str:
    return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n"


# -- binary answers -----------------------------------------------------------------------------

#: Longest audio the stand-in synthesises, whatever the input length (bounded answers).
MAX_AUDIO_SECONDS = 20.0
AUDIO_SAMPLE_RATE = 24000
AUDIO_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/opus",
               "aac": "audio/aac", "flac": "audio/flac"}

# A 1x1 lossless WebP (RIFF container, VP8L bitstream).
WEBP_1X1 = (b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11"
            b"\x11\x88\x88\xfe\x07\x00")


def speech_seconds(text: str) -> float:
    """About 0.35 s per word (at least 0.25 s), never more than ``MAX_AUDIO_SECONDS``."""
    return round(min(MAX_AUDIO_SECONDS, max(0.25, 0.35 * count_tokens(text))), 2)


def _tone(seconds: float, seed: bytes) -> bytes:
    """16-bit mono little-endian PCM at 24 kHz: a quiet, seed-pitched square wave."""
    samples = int(AUDIO_SAMPLE_RATE * seconds)
    period = 40 + seed[0] % 60
    half = period // 2
    wave = (struct.pack("<h", 1200) * half + struct.pack("<h", -1200) * (period - half))
    reps = samples // period + 1
    return (wave * reps)[:samples * 2]


def audio(fmt: str, seconds: float, seed: bytes) -> bytes:
    """Audio bytes of ``fmt``: a valid WAV for ``wav``, raw PCM for ``pcm``, and for the
    compressed formats bytes that start like the format (frame headers) sized like it."""
    seconds = max(0.05, min(seconds, MAX_AUDIO_SECONDS))
    if fmt == "pcm":
        return _tone(seconds, seed)
    if fmt == "wav":
        pcm = _tone(seconds, seed)
        return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, AUDIO_SAMPLE_RATE, AUDIO_SAMPLE_RATE * 2,
                              2, 16)
                + b"data" + struct.pack("<I", len(pcm)) + pcm)
    if fmt == "flac":
        head = b"fLaC" + b"\x80\x00\x00\x22" + _stream_bytes(seed, 34)
        return head + _stream_bytes(seed + b"flac", int(12000 * seconds))
    if fmt == "opus":
        page = b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01\x38\x01\xc0\x5d"
        return page + _stream_bytes(seed + b"opus", int(3000 * seconds))
    if fmt == "aac":
        frame = b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(9)
        return frame * max(1, int(47 * seconds))
    # mp3: 64 kbit/s MPEG-1 layer III frames (208 bytes each, ~38 per second), ID3 first.
    frame = b"\xff\xfb\x50\xc4" + bytes(204)
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + frame * max(1, int(38.28 * seconds))


def mp4(seed: bytes, seconds: float = 4.0) -> bytes:
    """A small ISO-BMFF file: ``ftyp``, a ``moov`` with an ``mvhd``, an ``mdat`` of noise."""
    def box(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + tag + payload

    duration = int(max(1.0, min(seconds, 60.0)) * 1000)
    mvhd = box(b"mvhd", bytes(4) + bytes(8) + struct.pack(">II", 1000, duration) + bytes(80))
    return (box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41") + box(b"moov", mvhd)
            + box(b"mdat", _stream_bytes(seed + b"mp4", 4096)))


def zip_archive(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def binary(content_type: str, seed: bytes) -> bytes:
    """Bytes of ``content_type`` for a generic binary answer."""
    if content_type == "video/mp4":
        return mp4(seed)
    if content_type == "image/webp":
        return WEBP_1X1
    if content_type == "image/png":
        return png(8, 8, colour(seed))
    if content_type == "application/zip":
        return zip_archive({"SKILL.md": b"# Stand-in skill\n\nGenerated by the stand-in.\n"})
    if content_type == "audio/mpeg":
        return audio("mp3", 1.0, seed)
    return _stream_bytes(seed + b"bin", 1024)
