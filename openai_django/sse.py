"""Server-sent events, read incrementally: what the stream relays (sync and async) keep.

Both shapes the API uses are read the same way: unnamed ``data:`` lines ending with
``data: [DONE]`` (chat, completions, fine-tune events) and named events (``event:
response.output_text.delta`` + ``data: {...}``: the Responses API, speech, transcription and
image streams, whose payloads carry the same name as their ``type``). Only the ``data`` payloads
are kept, as text; the kind of the operation reads them (``kinds.Kind.assemble``).
"""

_DONE = "[DONE]"


class SSEParser:
    """Split a byte stream into server-sent events, keeping each event's ``data`` payload."""

    __slots__ = ("_buffer", "events", "done", "names")

    def __init__(self):
        self._buffer = b""
        self.events = []  # the ``data`` payload of each event, as text
        self.names = []  # each event's ``event:`` name, or "" (parallel to ``events``)
        self.done = False  # ``data: [DONE]`` was seen

    def feed(self, chunk):
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            self._block(buffer[:end])
            buffer = buffer[end + 2:]
        self._buffer = buffer

    def close(self):
        """The stream ended: an event not followed by a blank line still counts."""
        if self._buffer.strip():
            self._block(self._buffer)
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
            self.done = True
            return
        self.events.append(payload)
        self.names.append(name)


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
