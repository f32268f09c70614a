"""The redact hook and the metadata-only switches: what is stored is redacted (or absent), what
the upstream receives is what the client sent."""

import base64
import importlib.util
import json
from dataclasses import dataclass

import pytest
from django.core.exceptions import ImproperlyConfigured

from openai_django.models import APIKey, Artifact, Call
from openai_django.redaction import (
    CARD_MASK,
    EMAIL_MASK,
    IBAN_MASK,
    IP_MASK,
    PHONE_MASK,
    SECRET_MASK,
    SSN_MASK,
    PresidioRedactor,
    presidio_redactor,
    redact_pii,
    redact_stream_events,
    redact_text,
)

REDACT = "openai_django.redaction.redact_pii"
EMAIL = "jane.doe+billing@example-corp.co.uk"
PHONE = "+1 (415) 555-2671"
OPENAI_KEY = "sk-proj-Zx8Qm2Lr7Tn4Vb6Yc1Hd9Kf3Jg5Ws0Pe"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# -- the built-in redactor ---------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (f"Write to {EMAIL}, thanks", f"Write to {EMAIL_MASK}, thanks"),
    (f"My number is {PHONE}.", f"My number is {PHONE_MASK}."),
    ("Appelez le 06 12 34 56 78 demain", f"Appelez le {PHONE_MASK} demain"),
    ("London office: 020 7946 0958", f"London office: {PHONE_MASK}"),
    (f"use {OPENAI_KEY} for prod", f"use {SECRET_MASK} for prod"),
    ("Authorization: Bearer abcdefghijklmnop1234", f"Authorization: {SECRET_MASK}"),
    (f"aws AKIAIOSFODNN7EXAMPLE {AWS_SECRET}", f"aws {SECRET_MASK} {SECRET_MASK}"),
    ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", f"token {SECRET_MASK}"),
    ("secret=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
     f"secret={SECRET_MASK}"),
])
def test_masks_emails_phones_and_keys(text, expected):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "On 2024-01-15 at 10:30 the order 1234567890 shipped.",
    "The server answered in 3.14159 s; total 1,234,567 tokens.",
    "Use gpt-4o-mini with temperature 0.7 and max_tokens 1024.",
    "See /usr/local/lib/python3.11/site-packages/django/db/models/query.py line 1240",
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a long word.",
    "chatcmpl-9aBcDeF created 1712345678",
])
def test_leaves_ordinary_text_alone(text):
    assert redact_text(text) == text


@pytest.mark.parametrize("text, expected", [
    # Card numbers pass the Luhn check: with spaces, dashes or none, 13 to 19 digits.
    ("card 4111 1111 1111 1111, exp 12/29", f"card {CARD_MASK}, exp 12/29"),
    ("card 4111-1111-1111-1111.", f"card {CARD_MASK}."),
    ("card 5555555555554444 on file", f"card {CARD_MASK} on file"),
    ("amex 3782 822463 10005", f"amex {CARD_MASK}"),  # 15 digits: not a phone either
    # IBANs: the country's length and the mod-97 check, printed in groups or compact.
    ("IBAN DE89 3704 0044 0532 0130 00 please", f"IBAN {IBAN_MASK} please"),
    ("to GB82WEST12345698765432.", f"to {IBAN_MASK}."),
    ("FR14 2004 1010 0505 0001 3M02 606 AND MORE", f"{IBAN_MASK} AND MORE"),
    # A US SSN is an SSN, not a phone.
    ("SSN 123-45-6789 on the form", f"SSN {SSN_MASK} on the form"),
    # IP addresses, as ipaddress reads them.
    ("The server 192.168.100.200 answered", f"The server {IP_MASK} answered"),
    ("from 203.0.113.7:443, then", f"from {IP_MASK}:443, then"),
    ("client 2001:db8::8a2e:370:7334.", f"client {IP_MASK}."),
    ("GET http://[fe80::1ff:fe23:4567:890a]:8080/", f"GET http://[{IP_MASK}]:8080/"),
    ("mapped ::ffff:192.0.2.1 here", f"mapped {IP_MASK} here"),
])
def test_masks_cards_ibans_ssns_and_ip_addresses(text, expected):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "a 16-digit number failing Luhn: 4111 1111 1111 1112",
    "order 4111111111111112 shipped",
    "a 20-digit id 41111111111111111111 and 1234 5678 9012 3456 7890",
    "timestamps 1712345678901 (ms) and 1712345678901234567 (ns)",
    "GB82WEST12345698765433 has a bad check digit; XX89370400440532013000 no country",
    "not addresses: 999.1.1.1, 10:30:00, 00:1A:2B:3C:4D:5E, std::vector, dead::beef",
    "loopback and any: 127.0.0.1, 0.0.0.0, ::1 and ::",
])
def test_numbers_failing_their_check_are_kept(text):
    assert redact_text(text) == text


def test_an_ssn_is_masked_as_an_ssn_and_a_phone_still_as_a_phone():
    assert redact_text("123-45-6789") == SSN_MASK
    assert redact_text("call 415-555-2671 or 123 45 6789") == f"call {PHONE_MASK} or {SSN_MASK}"


def test_a_card_number_cut_across_stream_chunks_is_masked():
    pieces = ["pay with 4111 11", "11 1111 1111 today"]
    events = [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    out = redact_stream_events(events)
    text = "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in out)
    assert text == f"pay with {CARD_MASK} today"


def test_walks_json_without_mutating_it_and_skips_binary():
    image = base64.b64encode(bytes(range(256)) * 8).decode()
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [
                {"type": "text", "text": f"Email {EMAIL} the summary"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            ]},
        ],
        "temperature": 0.2,
        "n": 1,
    }
    original = json.loads(json.dumps(body))
    redacted = redact_pii(body, call=None, field="request_body")
    assert body == original  # the gateway sends this very object upstream
    assert redacted["messages"][1]["content"][0]["text"] == f"Email {EMAIL_MASK} the summary"
    assert redacted["messages"][1]["content"][1] == original["messages"][1]["content"][1]
    assert redacted["temperature"] == 0.2 and redacted["messages"][0] == original["messages"][0]

    response = {"data": [{"b64_json": image, "revised_prompt": f"for {EMAIL}"}],
                "embedding_like": [{"embedding": [0.1, -0.2, 0.3]}]}
    out = redact_pii(response, call=None, field="response_body")
    assert out["data"][0]["b64_json"] == image
    assert out["data"][0]["revised_prompt"] == f"for {EMAIL_MASK}"
    assert out["embedding_like"] == response["embedding_like"]


def test_stream_events_are_redacted_across_chunk_boundaries():
    pieces = ["Sure, write to jane", ".doe@exam", "ple.com or call +1 415 ", "555 2671", "!"]
    events = [json.dumps({"id": "c1", "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": {"content": p}}]})
              for p in pieces]
    events.append(json.dumps({"id": "c1", "choices": [], "usage": {"total_tokens": 9}}))
    out = redact_stream_events(events)
    assert len(out) == len(events)
    text = "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in out[:-1])
    assert text == f"Sure, write to {EMAIL_MASK} or call {PHONE_MASK}!"
    assert out[-1] == events[-1]  # untouched events are kept byte for byte
    assert all(json.loads(e)["id"] == "c1" for e in out)


# -- Presidio ------------------------------------------------------------------------------


def test_presidio_hook_says_how_to_install_it_when_it_is_missing():
    if importlib.util.find_spec("presidio_analyzer") is not None:
        pytest.skip("presidio-analyzer is installed here")
    with pytest.raises(ImproperlyConfigured, match=r"openai-django\[presidio\]"):
        PresidioRedactor()
    with pytest.raises(ImproperlyConfigured, match="presidio-analyzer"):
        presidio_redactor("Jane Doe lives in Paris", call=None, field="prompt")


@dataclass
class Finding:
    """The fields of presidio_analyzer.RecognizerResult that the adapter reads."""
    entity_type: str
    start: int
    end: int
    score: float


class StandInAnalyzer:
    """The one thing mocked in these tests: Presidio's AnalyzerEngine, because it needs a spaCy
    model fetched from a model hub, which this project cannot download. It answers like
    AnalyzerEngine.analyze (findings with entity type, span and score) for fixed phrases, and
    records how it was asked; everything the adapter does with the answer is the real code."""

    def __init__(self, phrases):
        self.phrases = phrases  # {phrase: (entity type, score)}
        self.asked = []

    def analyze(self, text, language, entities=None, score_threshold=0.0, **kwargs):
        self.asked.append((text, language, entities, score_threshold))
        findings = []
        for phrase, (entity, score) in self.phrases.items():
            start = text.find(phrase)
            while start != -1:
                if (entities is None or entity in entities) and score >= score_threshold:
                    findings.append(Finding(entity, start, start + len(phrase), score))
                start = text.find(phrase, start + 1)
        return findings


def test_presidio_findings_are_masked_beside_the_built_in_rules():
    analyzer = StandInAnalyzer({
        "Jane Doe": ("PERSON", 0.85), "Jane": ("PERSON", 0.6), "Paris": ("LOCATION", 0.8),
        "Doe lives": ("NRP", 0.55),  # overlaps the higher-scored name: not masked
        "jane.doe": ("PERSON", 0.9),  # inside an email the built-in rules mask first
        "Tuesday": ("DATE_TIME", 0.9),  # not asked for by default
    })
    redact = PresidioRedactor(analyzer=analyzer, language="fr")
    text = f"Jane Doe lives in Paris, {EMAIL}, card 4111 1111 1111 1111, on Tuesday."
    assert redact(text, call=None, field="prompt") == (
        f"[redacted person] lives in [redacted location], {EMAIL_MASK}, card {CARD_MASK}, "
        f"on Tuesday.")
    _, language, entities, threshold = analyzer.asked[-1]
    assert language == "fr" and "PERSON" in entities and "DATE_TIME" not in entities
    assert threshold == 0.5

    only_presidio = PresidioRedactor(analyzer=analyzer, builtin=False, entities=None,
                                     score_threshold=0.7)
    assert only_presidio("On Tuesday Jane Doe paid 4111 1111 1111 1111", call=None,
                         field="prompt") == (
        "On [redacted date time] [redacted person] paid 4111 1111 1111 1111")


def test_presidio_redactor_walks_json_and_streams_like_the_built_in_one():
    redact = PresidioRedactor(analyzer=StandInAnalyzer({"Jane Doe": ("PERSON", 0.9)}))
    body = {"messages": [{"role": "user", "content": "Hi, Jane Doe here"}],
            "data": [{"b64_json": "SmFuZSBEb2U="}]}
    out = redact(body, call=None, field="request_body")
    assert out["messages"][0]["content"] == "Hi, [redacted person] here"
    assert out["data"] == body["data"] and body["messages"][0]["content"] == "Hi, Jane Doe here"

    pieces = ["Signed, Ja", "ne Do", "e."]
    events = [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    out = redact(events, call=None, field="stream_events")
    assert "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in out) == (
        "Signed, [redacted person].")


presidio_with_stand_in = PresidioRedactor(analyzer=StandInAnalyzer({"Jane": ("PERSON", 0.9)}))


# -- end to end through the gateway --------------------------------------------------------------


pytestmark_db = pytest.mark.django_db(transaction=True)


def _prompt():
    return (f"Hi, I'm Jane ({EMAIL}, {PHONE}). Our key {OPENAI_KEY} leaked, "
            f"please rotate it and reply to {EMAIL}.")


@pytestmark_db
def test_chat_is_recorded_redacted_but_sent_as_is(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "REDACT": REDACT}
    prompt = _prompt()
    response = http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": prompt}],
    })
    assert response.status_code == 200, response.text
    # The client got the upstream's answer unchanged (it quotes the prompt).
    assert EMAIL in response.json()["choices"][0]["message"]["content"]
    # The upstream received exactly what the client sent.
    sent = upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][1]["content"] == prompt

    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.redacted is True
    stored = json.dumps([call.request_body, call.response_body, call.prompt_preview,
                         call.output_text])
    for secret in (EMAIL, "555-2671", OPENAI_KEY):
        assert secret not in stored
    assert EMAIL_MASK in call.request_body["messages"][1]["content"]
    assert PHONE_MASK in call.prompt_preview and SECRET_MASK in call.prompt_preview
    assert EMAIL_MASK in call.output_text
    assert call.request_body["messages"][0]["content"] == "Be brief."
    # The REST log shows the redacted record and says so.
    detail = http.get(f"{http.base}/calls/{call.pk}").json()
    assert detail["redacted"] is True and EMAIL not in json.dumps(detail)


@pytestmark_db
def test_streamed_chat_is_recorded_redacted(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "REDACT": REDACT}
    upstream.configure(events=12)  # the quoted prompt arrives cut into many chunks
    prompt = _prompt()
    with http.post(f"{http.base}/chat/completions", stream=True, json={
        "model": "gpt-4o-mini", "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_content(None)).decode()
        call_id = response.headers["X-Call-Id"]
    assert "[DONE]" in received
    call = Call.objects.get(pk=call_id)
    assert call.status == Call.Status.SUCCEEDED
    assert call.redacted is True
    stored = json.dumps([call.request_body, call.stream_events, call.output_text])
    for secret in (EMAIL, OPENAI_KEY):
        assert secret not in stored
    client_text = "".join(
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in received.splitlines()
        if line.startswith("data: {"))
    assert EMAIL in client_text  # the client's stream was not touched


@pytestmark_db
def test_a_custom_hook_sees_each_field_with_the_call(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "REDACT": "tests.test_redaction.upper_hook"}
    seen.clear()
    response = http.post(f"{http.base}/completions",
                         json={"model": "gpt-3.5-turbo-instruct", "prompt": "hello there"})
    assert response.status_code == 200
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert {"request_body", "prompt", "response_body", "output_text"} <= set(seen)
    assert all(op == "createCompletion" for op in seen.values())
    assert call.request_body["prompt"] == "HELLO THERE"
    assert call.prompt_preview == "HELLO THERE"
    assert upstream.requests()[-1]["body"]["prompt"] == "hello there"


@pytestmark_db
def test_a_presidio_redactor_serves_as_the_hook(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "REDACT": "tests.test_redaction.presidio_with_stand_in"}
    prompt = f"Jane wrote from {EMAIL}"
    response = http.post(f"{http.base}/completions",
                         json={"model": "gpt-3.5-turbo-instruct", "prompt": prompt})
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.redacted is True
    assert call.request_body["prompt"] == f"[redacted person] wrote from {EMAIL_MASK}"
    assert upstream.requests()[-1]["body"]["prompt"] == prompt


seen = {}


def upper_hook(value, *, call, field):
    """A site's own hook: upper-cases every string (and proves the call is passed)."""
    seen[field] = call.operation

    def walk(v):
        if isinstance(v, str):
            return v.upper()
        if isinstance(v, dict):
            return {k: (v2 if k in ("id", "object", "model") else walk(v2)) for k, v2 in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(value)


# -- metadata only ---------------------------------------------------------------------------------


def _assert_no_bodies(call):
    assert call.metadata_only is True
    assert call.request_body is None and call.response_body is None
    assert call.prompt_preview == "" and call.output_text == "" and call.response_text == ""
    assert call.stream_events is None and call.payload is None


@pytestmark_db
def test_metadata_only_operation_keeps_no_bodies(http, upstream, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "METADATA_ONLY_OPERATIONS": ["createChatCompletion"]}
    response = http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": _prompt()}]})
    assert response.status_code == 200
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    _assert_no_bodies(call)
    # Metadata is still there: usage, status, model, timings.
    assert call.status == Call.Status.SUCCEEDED and call.model == "gpt-4o-mini"
    assert call.total_tokens and call.latency_ms is not None
    assert upstream.requests()[-1]["body"]["messages"][0]["content"] == _prompt()
    # Another operation is still recorded in full.
    response = http.post(f"{http.base}/embeddings",
                         json={"model": "text-embedding-3-small", "input": "hello"})
    other = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert other.metadata_only is False and other.request_body["input"] == "hello"


@pytestmark_db
def test_metadata_only_key_keeps_no_bodies_nor_artifacts(live_server, upstream, media_root,
                                                          user):
    import requests

    key, raw = APIKey.generate(user, name="private", metadata_only=True)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {raw}"
    base = live_server.url + "/v1"
    response = session.post(f"{base}/images/generations", json={
        "prompt": f"a portrait of {EMAIL}", "response_format": "b64_json"})
    assert response.status_code == 200
    assert response.json()["data"][0]["b64_json"]
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    _assert_no_bodies(call)
    assert call.api_key_id == key.pk
    assert not Artifact.objects.filter(call=call).exists()
    response = session.post(f"{base}/audio/transcriptions",
                            files={"file": ("voice.mp3", b"ID3" + b"\0" * 2000, "audio/mpeg")},
                            data={"model": "whisper-1"})
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    _assert_no_bodies(call)
    assert not Artifact.objects.filter(call=call).exists()
    assert not any(media_root.rglob("*.mp3")) if media_root.exists() else True
    session.close()


@pytestmark_db
def test_a_prompt_lengthened_by_masks_still_fits_its_column(http, upstream, settings):
    """Masks are longer than short addresses: the preview is cut to its 300 characters (an
    error on PostgreSQL otherwise, which enforces varchar lengths)."""
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "REDACT": REDACT}
    prompt = " ".join(f"u{i}@ex.io" for i in range(40))[:295]
    response = http.post(f"{http.base}/completions",
                         json={"model": "gpt-3.5-turbo-instruct", "prompt": prompt})
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert len(call.prompt_preview) == 300 and call.prompt_preview.startswith(EMAIL_MASK)
    assert "@ex.io" not in json.dumps(call.request_body)


@pytestmark_db
def test_the_admin_shows_that_a_call_was_redacted(http, upstream, settings, admin_client):
    from django.urls import reverse

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "REDACT": REDACT}
    response = http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": _prompt()}]})
    page = admin_client.get(reverse("admin:openai_django_call_change",
                                    args=[response.headers["X-Call-Id"]])).content.decode()
    assert "Redacted" in page and EMAIL_MASK in page
    assert EMAIL not in page and OPENAI_KEY not in page
