"""The built-in redact hook: mask emails, phone numbers and key-like strings before storing.

Enable it with ``OPENAI_DJANGO = {"REDACT": "openai_django.redaction.redact_pii"}``. The recorder
calls the hook on each recorded field (``request_body``, ``prompt``, ``response_body``,
``output_text``, ``response_text``, ``stream_events``) *before* the row is written, so the
unredacted text never reaches the database; the upstream still receives what the client sent.

Why it looks the way it does:

* It walks JSON (dicts, lists, strings) and returns a new value; it never mutates its input,
  because the gateway sends the very same objects upstream after recording them.
* Binary payloads carried as text are left alone: values under ``b64_json``/``embedding``, data
  URLs (``data:image/png;base64,...``) and long whitespace-free base64 runs. Masking inside
  them would turn a record of an image or a vector into garbage without protecting anyone.
* Stream events are redacted on the *assembled* text of each choice, not event by event: a
  model streams ``"alice@"`` and ``"example.com"`` in separate chunks, and a per-event pass would
  keep the address whole across the two.
* Phone numbers are matched conservatively (a ``+`` prefix, or digit groups with separators,
  9 to 15 digits, not dates or IP addresses) so that ids, timestamps and token counts survive.

Write your own hook with the same signature, ``hook(value, *, call, field) -> value``; it may
delegate to :func:`redact_text`/:func:`redact_pii` and add patterns of its own.
"""

import copy
import json
import logging
import re

logger = logging.getLogger("openai_django.redaction")

EMAIL_MASK = "[redacted email]"
PHONE_MASK = "[redacted phone]"
SECRET_MASK = "[redacted secret]"

# Keys whose values are binary data or vectors, never text a person wrote.
SKIP_KEYS = frozenset({"b64_json", "embedding", "embeddings"})
# A whitespace-free run of base64 characters at least this long is taken as binary data.
BINARY_MIN_CHARS = 512
_BINARY = re.compile(r"[A-Za-z0-9+/=_-]+")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])"
)

# Ordered: the specific shapes first, so a "Bearer sk-..." header is masked as one secret.
_SECRETS = [
    # Authorization header values.
    re.compile(r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{12,}"),
    # OpenAI-style keys (sk-..., sk-proj-..., this app's own sk-od-...).
    re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]{16,}"),
    # AWS access key ids.
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}(?![A-Z0-9])"),
    # GitHub, Slack, Google API keys, Stripe keys.
    re.compile(r"(?<![\w])gh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"(?<![\w])xox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?<![\w])AIza[0-9A-Za-z_-]{35}"),
    re.compile(r"(?<![\w])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    # JSON Web Tokens.
    re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # Long hex secrets (32+ hex digits: API secrets, session ids, private key material).
    re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])"),
]
# Long base64-ish tokens (an AWS secret key is 40): only when they mix upper case, lower case
# and digits, so long ordinary words and paths are kept.
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/=_-])")

# A phone number candidate: optional + or 00, digits and separators, ending on a digit.
_PHONE = re.compile(r"(?<![\w+.,/-])(?:\+|00)?\(?\d[\d\s().-]{5,22}\d(?![\w/]|[.,-]\d)")
_DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_IP_LIKE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def _is_phone(candidate):
    digits = sum(ch.isdigit() for ch in candidate)
    if not 9 <= digits <= 15:
        return False
    text = candidate.strip()
    if "\n" in text:
        return False
    international = text.startswith(("+", "00"))
    if not international and not re.search(r"[\s().-]", text):
        # A bare run of digits is an id, a timestamp or an amount far more often than a phone.
        return False
    if _DATE_LIKE.match(text) or _IP_LIKE.match(text):
        return False
    # Decimal amounts ("12.50", "3.14159") and version numbers are not phones.
    return not re.fullmatch(r"\d+\.\d+", text)


def _phone_sub(match):
    value = match.group(0)
    stripped = value.rstrip()
    if not _is_phone(stripped):
        return value
    return PHONE_MASK + value[len(stripped):]


def _token_sub(match):
    value = match.group(0)
    if (re.search(r"[A-Z]", value) and re.search(r"[a-z]", value) and re.search(r"\d", value)):
        return SECRET_MASK
    return value


def redact_text(text):
    """Mask emails, key-like strings and phone numbers in one string."""
    if not text or (len(text) >= BINARY_MIN_CHARS and _BINARY.fullmatch(text)):
        return text
    if text.startswith("data:") and ";base64," in text[:100]:
        return text
    for pattern in _SECRETS:
        text = pattern.sub(SECRET_MASK, text)
    text = _TOKEN.sub(_token_sub, text)
    text = _EMAIL.sub(EMAIL_MASK, text)
    text = _PHONE.sub(_phone_sub, text)
    return text


def redact_json(value):
    """A copy of a JSON value with every string redacted (binary-looking values skipped)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: (item if key in SKIP_KEYS else redact_json(item)) for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_json(item) for item in value]
    return value


def redact_pii(value, *, call=None, field=None):
    """The built-in ``REDACT`` hook (see the module docstring)."""
    if field == "stream_events" and isinstance(value, list):
        return redact_stream_events(value)
    return redact_json(value)


# -- streams -------------------------------------------------------------------------------


def _delta_text_slots(event):
    """(choice index, dict, key) for each text-carrying piece of one parsed chunk."""
    slots = []
    if not isinstance(event, dict):
        return slots
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            slots.append((index, delta, "content"))
        elif isinstance(choice.get("text"), str):
            slots.append((index, choice, "text"))
    return slots


def redact_stream_events(events):
    """Redact a list of SSE payloads (JSON strings, as recorded) across event boundaries.

    The text of each choice is assembled, redacted as one string, and the masked spans are
    written back: a match is replaced in the piece where it starts and removed from the pieces
    it continues into. Everything else in the events (ids, roles, tool calls) is redacted piece
    by piece. Events that are not JSON are redacted as text.
    """
    parsed = []
    for raw in events:
        try:
            parsed.append(json.loads(raw) if isinstance(raw, str) else copy.deepcopy(raw))
        except ValueError:
            parsed.append(None)
    # Assemble each choice's text from its pieces, remembering where each piece sits.
    pieces = {}
    for position, event in enumerate(parsed):
        for index, holder, key in _delta_text_slots(event):
            pieces.setdefault(index, []).append((position, holder, key))
    replaced = {}
    for slots in pieces.values():
        texts = [holder[key] for _, holder, key in slots]
        whole = "".join(texts)
        spans = _mask_spans(whole)
        if not spans:
            continue
        starts, offset = [], 0
        for text in texts:
            starts.append(offset)
            offset += len(text)
        for (position, holder, key), start, text in zip(slots, starts, texts):
            new = _apply_spans(text, start, spans)
            if new != text:
                replaced[(position, id(holder), key)] = new
    out = []
    for position, (raw, event) in enumerate(zip(events, parsed)):
        if event is None:
            out.append(redact_text(raw) if isinstance(raw, str) else raw)
            continue
        slots = _delta_text_slots(event)
        for _, holder, key in slots:
            new = replaced.get((position, id(holder), key))
            if new is not None:
                holder[key] = new
        # The rest of the event (not the assembled text, which is done) piece by piece.
        keep = {id(holder): (key, holder[key]) for _, holder, key in slots}
        redacted = _redact_except(event, keep)
        if redacted == (json.loads(raw) if isinstance(raw, str) else raw):
            out.append(raw)
        else:
            out.append(json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
                       if isinstance(raw, str) else redacted)
    return out


def _redact_except(value, keep):
    """Like :func:`redact_json`, but leaves the already-redacted stream text slots as they are."""
    if isinstance(value, dict):
        skip_key = keep.get(id(value), (None,))[0]
        return {
            key: (item if key in SKIP_KEYS or key == skip_key else _redact_except(item, keep))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact_except(item, keep) for item in value]
    return redact_json(value)


def _mask_spans(text):
    """[(start, end, mask)] of everything :func:`redact_text` would mask in ``text``."""
    spans = []
    patterns = [(p, SECRET_MASK, None) for p in _SECRETS]
    patterns += [(_TOKEN, SECRET_MASK, _token_sub), (_EMAIL, EMAIL_MASK, None),
                 (_PHONE, PHONE_MASK, _phone_sub)]
    taken = [False] * len(text)
    for pattern, mask, check in patterns:
        for match in pattern.finditer(text):
            start, end = match.span()
            if check is not None:
                result = check(match)
                if result == match.group(0):
                    continue
                # _phone_sub keeps trailing whitespace outside the mask.
                end = start + len(match.group(0).rstrip())
            if any(taken[start:end]):
                continue
            for i in range(start, end):
                taken[i] = True
            spans.append((start, end, mask))
    return sorted(spans)


def _apply_spans(text, start, spans):
    """The piece ``text`` (at ``start`` in the whole) with the spans that touch it applied."""
    end = start + len(text)
    out, cursor = [], start
    for span_start, span_end, mask in spans:
        if span_end <= start or span_start >= end:
            continue
        lo, hi = max(span_start, start), min(span_end, end)
        out.append(text[cursor - start:lo - start])
        if span_start >= start:
            out.append(mask)  # the span starts in this piece: the mask goes here
        cursor = hi
    out.append(text[cursor - start:])
    return "".join(out)
