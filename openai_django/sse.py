"""Server-sent events, read incrementally: what the stream relays (sync and async) keep.

Both shapes the API uses are read the same way: unnamed ``data:`` lines ending with
``data: [DONE]`` (chat, completions, fine-tune events) and named events (``event:
response.output_text.delta`` + ``data: {...}``: the Responses API, speech, transcription and
image streams, whose payloads carry the same name as their ``type``). Only the ``data`` payloads
are kept, as text; the kind of the operation reads them (``kinds.Kind.assemble``).
"""

import threading
from collections import deque

_DONE = "[DONE]"


class SSEParser:
    """Split a byte stream into server-sent events, keeping each event's ``data`` payload.

    Lazy: :meth:`feed` only keeps the bytes (a relay calls it once an event, on the hot
    path); they are split into events when ``events``, ``names`` or ``done`` is read (a
    checkpoint, the record at the end), with the same result as splitting at every feed.
    """

    __slots__ = ("_buffer", "_pending", "_events", "_names", "_done", "_lock")

    def __init__(self):
        self._buffer = b""
        # Bytes fed and not split yet. A deque: a relay feeds on the event loop while the
        # checkpoint thread reads ``events`` (append and popleft are atomic; the lock keeps
        # two readers from splitting at once).
        self._pending = deque()
        self._lock = threading.Lock()
        self._events = []  # the ``data`` payload of each event, as text
        self._names = []  # each event's ``event:`` name, or "" (parallel to ``events``)
        self._done = False  # ``data: [DONE]`` was seen

    def feed(self, chunk):
        self._pending.append(chunk)

    @property
    def events(self):
        if self._pending:
            self._split()
        return self._events

    @property
    def names(self):
        if self._pending:
            self._split()
        return self._names

    @property
    def done(self):
        if self._pending:
            self._split()
        return self._done

    def _split(self):
        with self._lock:
            pending = self._pending
            parts = [self._buffer]
            while pending:
                parts.append(pending.popleft())
            self._split_bytes(b"".join(parts))

    def _split_bytes(self, buffer):
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: kept for the next bytes.
            tail = b"\r" if buffer.endswith(b"\r") else b""
            if tail:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            tail = b""
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            self._block(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:] + tail

    def close(self):
        """The stream ended: an event not followed by a blank line still counts."""
        if self._pending:
            self._split()
        with self._lock:
            if self._buffer.strip():
                self._block(self._buffer.replace(b"\r", b"\n"))
            self._buffer = b""

    def _block(self, block):
        data, name = [], ""
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if not data:
            return
        payload = b"\n".join(data).decode("utf-8", "replace")
        if payload.strip() == _DONE:
            self._done = True
            return
        self._events.append(payload)
        self._names.append(name)


def encode(events, *, named, done):
    """The bytes of a recorded stream, as it was sent: named events take their name from the
    payload's ``type``; unnamed ones end with ``[DONE]`` when the stream ended well."""
    import orjson

    out = []
    for payload in events:
        if named:
            try:
                name = orjson.loads(payload).get("type", "")
            except (orjson.JSONDecodeError, AttributeError):
                name = ""
            if name:
                out.append(b"event: " + name.encode() + b"\n")
        out.append(b"data: " + payload.encode() + b"\n\n")
    if done and not named:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)
