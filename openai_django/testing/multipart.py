"""``multipart/form-data`` parsing for uploads (images, audio, files).

A hand parser rather than the ``email`` package because uploads are several MB of binary data:
this one only ever does ``bytes.find`` for the boundary and slices, so a 10 MB file costs a
few milliseconds and one copy, and the bytes come back exactly as sent.
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote


class MultipartError(ValueError):
    """The body does not match its declared multipart boundary."""


class UploadedFile:
    """One file part.  ``sha256`` is computed once, on first use."""

    __slots__ = ("_sha256", "content_type", "data", "field", "filename")

    def __init__(self, field: str, filename: str, content_type: str, data: bytes) -> None:
        self.field = field
        self.filename = filename
        self.content_type = content_type
        self.data = data
        self._sha256: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256

    def describe(self) -> dict:
        """The JSON shape recorded in the control request log."""
        return {"field": self.field, "filename": self.filename,
                "content_type": self.content_type, "bytes": self.size, "sha256": self.sha256}


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=1; b="x;y"`` into the main value and its parameters."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == "\\" and quoted and i + 1 < len(value):
            current.append(value[i + 1])
            i += 1
        elif ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    main = parts[0].strip()
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, val = part.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        if key.endswith("*"):  # RFC 5987: charset'lang'percent-encoded
            charset, _, rest = val.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                val = unquote(encoded, encoding=charset or "utf-8")
            except LookupError:
                val = unquote(encoded)
            key = key[:-1]
        params[key] = val
    return main, params


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], list[UploadedFile]]:
    """Parse a multipart body into (text fields, files).

    Repeated text fields keep the last value, except names ending in ``[]`` which are joined
    with commas (e.g. ``timestamp_granularities[]``).
    """
    _, params = header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError("multipart body without a boundary")
    delim = b"--" + boundary.encode("latin-1")
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    pos = body.find(delim)
    if pos < 0:
        raise MultipartError("boundary not found")
    next_delim = b"\r\n" + delim
    pos += len(delim)
    while True:
        if body.startswith(b"--", pos):
            break  # closing delimiter
        # Skip transport padding and the CRLF after the delimiter line.
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise MultipartError("truncated part header")
        head_end = body.find(b"\r\n\r\n", eol)
        if head_end < 0:
            raise MultipartError("truncated part header")
        if head_end == eol:
            raw_headers = ""
        else:
            raw_headers = body[eol + 2:head_end].decode("utf-8", "replace")
        data_start = head_end + 4
        data_end = body.find(next_delim, data_start)
        if data_end < 0:
            raise MultipartError("missing closing boundary")
        headers: dict[str, str] = {}
        for line in raw_headers.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        _, disp = header_params(headers.get("content-disposition", ""))
        name = disp.get("name", "")
        data = body[data_start:data_end]
        if "filename" in disp:
            files.append(UploadedFile(name, disp["filename"],
                                      headers.get("content-type", "application/octet-stream"),
                                      data))
        else:
            text = data.decode("utf-8", "replace")
            if name.endswith("[]") and name in fields:
                fields[name] = fields[name] + "," + text
            else:
                fields[name] = text
        pos = data_end + len(next_delim)
    return fields, files
