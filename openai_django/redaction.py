"""The built-in redact hook: mask personal data and key-like strings before storing.

Enable it with ``OPENAI_DJANGO = {"REDACT": "openai_django.redaction.redact_pii"}``. The recorder
calls the hook on each recorded field (``request_body``, ``prompt``, ``response_body``,
``output_text``, ``response_text``, ``stream_events``) *before* the row is written, so the
unredacted text never reaches the database; the upstream still receives what the client sent.

What it masks, each with its own label: key-like strings (``[redacted secret]``), emails
(``[redacted email]``), IBANs (``[redacted iban]``), payment card numbers (``[redacted card]``),
US social security numbers (``[redacted ssn]``), IPv4 and IPv6 addresses (``[redacted ip]``) and
phone numbers (``[redacted phone]``). For names, places and the rest, :class:`PresidioRedactor`
puts Microsoft Presidio behind the same hook.

Why it looks the way it does:

* It walks JSON (dicts, lists, strings) and returns a new value; it never mutates its input,
  because the gateway sends the very same objects upstream after recording them.
* Binary payloads carried as text are left alone: values under ``b64_json``/``embedding``, data
  URLs (``data:image/png;base64,...``) and long whitespace-free base64 runs. Masking inside
  them would turn a record of an image or a vector into garbage without protecting anyone.
* Stream events are redacted on the *assembled* text of each choice, not event by event: a
  model streams ``"alice@"`` and ``"example.com"`` in separate chunks, and a per-event pass would
  keep the address whole across the two.
* Numbers are masked only when their own check says they are what they look like, so that ids,
  timestamps, amounts and token counts survive: a card number passes the Luhn check (and starts
  like a card: 2 to 6), an IBAN has its country's length and the ISO 7064 mod-97 check, an
  address is one that :mod:`ipaddress` accepts (loopback and ``0.0.0.0``/``::``, common in code
  and identifying no one, are kept), an SSN has a valid area, group and serial. The rules run in
  order, each on what the ones before left, so ``123-45-6789`` is an SSN, not a phone.
* Phone numbers are matched conservatively (a ``+`` prefix, or digit groups with separators,
  9 to 15 digits, not dates or IP addresses).

Write your own hook with the same signature, ``hook(value, *, call, field) -> value``; it may
delegate to :func:`redact_text`/:func:`redact_pii` and add patterns of its own.
"""

import copy
import ipaddress
import json
import logging
import re
import threading

from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("openai_django.redaction")

EMAIL_MASK = "[redacted email]"
PHONE_MASK = "[redacted phone]"
SECRET_MASK = "[redacted secret]"
CARD_MASK = "[redacted card]"
IBAN_MASK = "[redacted iban]"
SSN_MASK = "[redacted ssn]"
IP_MASK = "[redacted ip]"

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


def _is_token(value):
    return bool(re.search(r"[A-Z]", value) and re.search(r"[a-z]", value)
                and re.search(r"\d", value))


# -- numbers with a check of their own -------------------------------------------------------

# IBAN lengths by country (the SWIFT IBAN registry); an unknown country is not an IBAN.
_IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in """
    AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27
    DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22
    IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19
    MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31
    SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30
""".split()}
# Country, check digits, then letters and digits, compact or in the printed groups of four.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}")
# 13 to 19 digits, compact or in groups split by spaces or dashes, not part of a longer number.
_CARD = re.compile(r"(?<![\w.+/-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d|\w|[.,]\d)")
_SSN = re.compile(r"(?<![\w.+/-])(?<!\d[ -])\d{3}([ -])\d{2}\1\d{4}(?![ -]?\d|\w|[.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?![\w:]|\.\d)"
)


def _iban_span(match):
    """The span of the IBAN at ``match``: its country's length of characters, mod-97 valid."""
    text = match.group(0)
    length = _IBAN_LENGTHS.get(text[:2])
    if length is None:
        return None
    # Where the length-th letter or digit ends (the match may run on into the next word).
    ends = [position for position, char in enumerate(text, 1) if char != " "]
    if len(ends) < length:
        return None
    end = ends[length - 1]
    if match.string[match.start() + end:match.start() + end + 1].isalnum():
        return None  # glued to more letters or digits: a longer code, not this IBAN
    compact = text[:end].replace(" ", "")
    digits = "".join(str(int(char, 36)) for char in compact[4:] + compact[:4])
    if int(digits) % 97 != 1:
        return None
    return match.start(), match.start() + end


def _luhn(digits):
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _is_card(text):
    separators = {char for char in text if not char.isdigit()}
    digits = "".join(char for char in text if char.isdigit())
    # Cards start with 2 (Mastercard), 3 (Amex, Diners, JCB), 4 (Visa), 5 or 6: a 13-digit
    # millisecond timestamp or a 19-digit nanosecond one starts with 1 and is kept.
    return len(separators) <= 1 and digits[0] in "23456" and _luhn(digits)


def _is_ssn(text):
    area, group, serial = text[:3], text[4:6], text[7:]
    return (area not in ("000", "666") and area[0] != "9" and group != "00"
            and serial != "0000")


def _is_address(text, cls):
    try:
        address = cls(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _is_ipv6(text):
    # A digit is required so that hex words around "::" ("dead::beef") are left alone.
    return any(char.isdigit() for char in text) and _is_address(text, ipaddress.IPv6Address)


def _whole(check):
    """A rule's span finder from a yes/no check of the matched text."""
    def span(match):
        return match.span() if check(match.group(0)) else None
    return span


# The rules, in order: (pattern, mask, span finder or None for the whole match). Each runs on
# what the ones before left, so the specific shapes come first: a "Bearer sk-..." header is one
# secret, a card number inside an IBAN is part of the IBAN, an SSN is not taken for a phone.
_RULES = [
    *((pattern, SECRET_MASK, None) for pattern in _SECRETS),
    (_TOKEN, SECRET_MASK, _whole(_is_token)),
    (_EMAIL, EMAIL_MASK, None),
    (_IBAN, IBAN_MASK, _iban_span),
    (_CARD, CARD_MASK, _whole(_is_card)),
    (_SSN, SSN_MASK, _whole(_is_ssn)),
    (_IPV6, IP_MASK, _whole(_is_ipv6)),
    (_IPV4, IP_MASK, _whole(lambda text: _is_address(text, ipaddress.IPv4Address))),
    (_PHONE, PHONE_MASK, _whole(_is_phone)),
]
# What a masked span reads as to the rules after it: no pattern matches it, and it is neither a
# word character nor a separator, as the "]" of a mask would be.
_HIDDEN = "\0"


def _mask_spans(text):
    """[(start, end, mask)] of everything :func:`redact_text` masks in ``text``, sorted."""
    spans = []
    for pattern, mask, finder in _RULES:
        found = []
        for match in pattern.finditer(text):
            span = match.span() if finder is None else finder(match)
            if span is not None:
                found.append(span)
        if not found:
            continue
        pieces, cursor = [], 0
        for start, end in found:
            pieces += [text[cursor:start], _HIDDEN * (end - start)]
            cursor = end
            spans.append((start, end, mask))
        text = "".join(pieces) + text[cursor:]
    return sorted(spans)


def _is_binary(text):
    if len(text) >= BINARY_MIN_CHARS and _BINARY.fullmatch(text):
        return True
    return text.startswith("data:") and ";base64," in text[:100]


def _redact_string(text, find):
    if not text or _is_binary(text):
        return text
    spans = find(text)
    return _apply_spans(text, 0, spans) if spans else text


def redact_text(text):
    """Mask personal data and key-like strings in one string (see the module docstring)."""
    return _redact_string(text, _mask_spans)


def redact_json(value, find=_mask_spans):
    """A copy of a JSON value with every string redacted (binary-looking values skipped).

    ``find(text) -> [(start, end, mask)]`` says what to mask; the built-in rules by default.
    """
    if isinstance(value, str):
        return _redact_string(value, find)
    if isinstance(value, dict):
        return {
            key: (item if key in SKIP_KEYS else redact_json(item, find))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_json(item, find) for item in value]
    return value


def redact_pii(value, *, call=None, field=None):
    """The built-in ``REDACT`` hook (see the module docstring)."""
    return _redact_field(value, field, _mask_spans)


def _redact_field(value, field, find):
    if field == "stream_events" and isinstance(value, list):
        return redact_stream_events(value, find)
    return redact_json(value, find)


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


def redact_stream_events(events, find=_mask_spans):
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
        spans = find(whole)
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
            out.append(_redact_string(raw, find) if isinstance(raw, str) else raw)
            continue
        slots = _delta_text_slots(event)
        for _, holder, key in slots:
            new = replaced.get((position, id(holder), key))
            if new is not None:
                holder[key] = new
        # The rest of the event (not the assembled text, which is done) piece by piece.
        keep = {id(holder): (key, holder[key]) for _, holder, key in slots}
        redacted = _redact_except(event, keep, find)
        if redacted == (json.loads(raw) if isinstance(raw, str) else raw):
            out.append(raw)
        else:
            out.append(json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
                       if isinstance(raw, str) else redacted)
    return out


def _redact_except(value, keep, find):
    """Like :func:`redact_json`, but leaves the already-redacted stream text slots as they are."""
    if isinstance(value, dict):
        skip_key = keep.get(id(value), (None,))[0]
        return {
            key: (item if key in SKIP_KEYS or key == skip_key
                  else _redact_except(item, keep, find))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact_except(item, keep, find) for item in value]
    return redact_json(value, find)


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


# -- Presidio ------------------------------------------------------------------------------

# Presidio's entity types that have a mask here; any other type reads "[redacted <type>]".
PRESIDIO_MASKS = {
    "EMAIL_ADDRESS": EMAIL_MASK, "PHONE_NUMBER": PHONE_MASK, "CREDIT_CARD": CARD_MASK,
    "IBAN_CODE": IBAN_MASK, "IP_ADDRESS": IP_MASK, "US_SSN": SSN_MASK,
}
# What PresidioRedactor asks for by default: people, places and identifiers. Presidio's full set
# also has DATE_TIME and URL, which would mask every date and image link of the record.
PRESIDIO_ENTITIES = (
    "PERSON", "LOCATION", "NRP", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE",
    "IP_ADDRESS", "US_SSN", "US_PASSPORT", "US_DRIVER_LICENSE", "US_BANK_NUMBER",
    "MEDICAL_LICENSE",
)


def presidio_mask(entity_type):
    return PRESIDIO_MASKS.get(entity_type) or f"[redacted {entity_type.lower().replace('_', ' ')}]"


def _presidio_analyzer():
    try:
        from presidio_analyzer import AnalyzerEngine
    except ImportError as exc:
        raise ImproperlyConfigured(
            "The Presidio redactor needs presidio-analyzer: pip install "
            "'openai-django[presidio]' and a spaCy model (python -m spacy download "
            "en_core_web_lg) at build time."
        ) from exc
    return AnalyzerEngine()


class PresidioRedactor:
    """A ``REDACT`` hook that adds Microsoft Presidio's recognizers to the built-in rules.

    ``openai_django.redaction.presidio_redactor`` is one with the defaults; for other options
    make your own in a module of the site and point ``REDACT`` at it::

        # mysite/redact.py
        from openai_django.redaction import PresidioRedactor
        redact = PresidioRedactor(entities=["PERSON", "EMAIL_ADDRESS"], score_threshold=0.6)

    Only the analyzer is used: it says where the entities are, and the masking is this module's,
    so the masks read like the built-in ones and a stream is redacted on its assembled text.
    The built-in rules run first and win an overlap (``builtin=False`` leaves only Presidio's);
    of two overlapping Presidio findings the higher-scored, then the longer one is masked.

    ``analyzer`` is a ``presidio_analyzer.AnalyzerEngine`` of your own (another NLP engine, more
    languages, custom recognizers); by default one is built with Presidio's defaults, which load
    ``en_core_web_lg``. Install that model with the site, not at run time. Each string of a
    record goes through spaCy: count a few milliseconds per string.
    """

    def __init__(self, *, analyzer=None, language="en", entities=PRESIDIO_ENTITIES,
                 score_threshold=0.5, builtin=True):
        self.analyzer = analyzer if analyzer is not None else _presidio_analyzer()
        self.language = language
        self.entities = list(entities) if entities is not None else None
        self.score_threshold = score_threshold
        self.builtin = builtin

    def spans(self, text):
        """[(start, end, mask)] for ``text``: the built-in rules' and then Presidio's."""
        spans = _mask_spans(text) if self.builtin else []
        taken = [False] * len(text)
        for start, end, _ in spans:
            taken[start:end] = [True] * (end - start)
        results = self.analyzer.analyze(text=text, language=self.language,
                                        entities=self.entities,
                                        score_threshold=self.score_threshold)
        for result in sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start)):
            start, end = max(result.start, 0), min(result.end, len(text))
            if start >= end or result.score < self.score_threshold or any(taken[start:end]):
                continue
            taken[start:end] = [True] * (end - start)
            spans.append((start, end, presidio_mask(result.entity_type)))
        return sorted(spans)

    def __call__(self, value, *, call=None, field=None):
        return _redact_field(value, field, self.spans)


_default_presidio = None
_default_presidio_lock = threading.Lock()


def presidio_redactor(value, *, call=None, field=None):
    """The ``REDACT`` hook ``"openai_django.redaction.presidio_redactor"``: a
    :class:`PresidioRedactor` with the defaults, built on the first call (loading spaCy takes
    seconds). Raises ``ImproperlyConfigured`` when Presidio is not installed."""
    global _default_presidio
    if _default_presidio is None:
        with _default_presidio_lock:
            if _default_presidio is None:
                _default_presidio = PresidioRedactor()
    return _default_presidio(value, call=call, field=field)
