"""Prices from genai-prices (by date, cached input, reasoning, image and audio models), the
``PRICES`` setting overriding them, and ``manage.py openai_reprice``."""

import datetime
import json
import random
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot

from openai_django import pricing
from openai_django.models import Call
from openai_django.pricing import estimate_cost, price_for

M = 1_000_000
UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 20, 12, tzinfo=UTC)


def chat(model, prompt=M, completion=M, created=NOW, operation="createChatCompletion", **fields):
    total = (prompt or 0) + (completion or 0) if prompt is not None else None
    return Call(operation=operation, status="succeeded", model=model, created=created,
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=total,
                **fields)


def prices(settings, table):
    settings.OPENAI_DJANGO = {**(getattr(settings, "OPENAI_DJANGO", {}) or {}),
                              "PRICES": table}


# -- the examples ------------------------------------------------------------------------

@pytest.mark.once
@pytest.mark.parametrize(("model", "usd_in", "usd_out"), [
    ("gpt-4.1", "2", "8"),  # was priced as gpt-4*: $30 / $60
    ("gpt-4.1-2025-04-14", "2", "8"),
    ("gpt-4.1-mini", "0.4", "1.6"),
    ("o1-pro", "150", "600"),  # was priced as o1: $15 / $60
    ("o1", "15", "60"),
    ("o3", "2", "8"),
    ("o4-mini", "1.1", "4.4"),
    ("gpt-5", "1.25", "10"),
    ("gpt-4", "30", "60"),
    ("gpt-4o-mini", "0.15", "0.6"),
])
def test_token_models_are_priced_per_million_from_genai_prices(model, usd_in, usd_out):
    assert estimate_cost(chat(model, completion=0)) == Decimal(usd_in)
    assert estimate_cost(chat(model, prompt=0)) == Decimal(usd_out)
    assert estimate_cost(chat(model, prompt=1000, completion=500)) == (
        (Decimal(usd_in) * 1000 + Decimal(usd_out) * 500) / M).quantize(Decimal("0.000001"))


@pytest.mark.once
def test_prices_follow_the_date_of_the_call():
    # o3 cost $10 / $40 per M until OpenAI cut it to $2 / $8 on 2025-06-10.
    before = chat("o3", created=datetime.datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    after = chat("o3", created=datetime.datetime(2025, 6, 10, 0, 1, tzinfo=UTC))
    assert estimate_cost(before) == Decimal(50)
    assert estimate_cost(after) == Decimal(10)


@pytest.mark.once
def test_cached_tokens_are_priced_at_the_cached_rate():
    # gpt-4.1: $2 per M input, $0.50 per M cached input, $8 per M output.
    call = chat("gpt-4.1", prompt=2 * M, completion=0, cached_tokens=M)
    assert estimate_cost(call) == Decimal("2.5")
    # A model without a cached price (o1-pro) charges cached tokens as input.
    assert estimate_cost(chat("o1-pro", prompt=M, completion=0, cached_tokens=M // 2)) == 150


@pytest.mark.once
def test_reasoning_tokens_are_output_tokens():
    # OpenAI bills reasoning tokens (part of completion_tokens) at the output rate.
    call = chat("o4-mini", prompt=0, completion=M, reasoning_tokens=M // 2,
                operation="createResponse")
    assert estimate_cost(call) == Decimal("4.4")


@pytest.mark.once
def test_service_tier_of_the_answer_picks_flex_and_priority_prices():
    flex = chat("gpt-5", completion=0, response_body={"service_tier": "flex"})
    priority = chat("gpt-5", completion=0, response_body={"service_tier": "priority"})
    default = chat("gpt-5", completion=0, response_body={"service_tier": "default"})
    assert estimate_cost(default) == Decimal("1.25")
    assert estimate_cost(flex) == Decimal("0.625")
    assert estimate_cost(priority) == Decimal("2.5")


@pytest.mark.once
def test_long_prompts_pay_the_tier_rate():
    # gpt-5.4 charges every token at the higher rate once the prompt passes 272K tokens.
    short = chat("gpt-5.4", prompt=272_000, completion=0)
    long = chat("gpt-5.4", prompt=272_001, completion=0)
    expected = [calc_price(Usage(input_tokens=n), "gpt-5.4", provider_id="openai",
                           genai_request_timestamp=NOW).total_price for n in (272_000, 272_001)]
    assert expected[1] / 272_001 > expected[0] / 272_000  # the data has the cliff
    assert [estimate_cost(short), estimate_cost(long)] == [
        e.quantize(Decimal("0.000001")) for e in expected]


@pytest.mark.once
def test_image_models():
    # gpt-image-1 is priced by tokens: text in $5, image in $10, image out $40 per M.
    usage = {"input_tokens": 1300, "output_tokens": 4160, "total_tokens": 5460,
             "input_tokens_details": {"text_tokens": 300, "image_tokens": 1000}}
    call = Call(operation="createImageEdit", status="succeeded", model="gpt-image-1",
                created=NOW, prompt_tokens=1300, completion_tokens=4160, total_tokens=5460,
                response_body={"data": [{}], "usage": usage})
    assert estimate_cost(call) == (Decimal(300 * 5 + 1000 * 10 + 4160 * 40) / M).quantize(
        Decimal("0.000001"))
    # dall-e (not in the database): per image, by quality and size.
    hd = Call(operation="createImage", status="succeeded", model="dall-e-3", created=NOW,
              request_body={"n": 2, "quality": "hd", "size": "1024x1792"},
              response_body={"data": [{}, {}]})
    assert estimate_cost(hd) == Decimal("0.24")
    small = Call(operation="createImageVariation", status="succeeded", model="", created=NOW,
                 request_body={"size": "256x256"}, response_body={"data": [{}]})
    assert estimate_cost(small) == Decimal("0.016")


@pytest.mark.once
def test_audio_models():
    whisper = Call(operation="createTranscription", status="succeeded", model="whisper-1",
                   created=NOW, response_body={"text": "hi", "duration": 90})
    assert estimate_cost(whisper) == Decimal("0.009")  # $0.006 per minute
    seconds = Call(operation="createTranscription", status="succeeded", model="whisper-1",
                   created=NOW, response_body={"text": "hi",
                                               "usage": {"type": "duration", "seconds": 30}})
    assert estimate_cost(seconds) == Decimal("0.003")
    usage = {"type": "tokens", "input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100,
             "input_token_details": {"text_tokens": 0, "audio_tokens": 1000}}
    transcribe = Call(operation="createTranscription", status="succeeded", created=NOW,
                      model="gpt-4o-transcribe", prompt_tokens=1000, completion_tokens=100,
                      total_tokens=1100, response_body={"text": "hi", "usage": usage})
    assert estimate_cost(transcribe) == Decimal("0.007")  # $6 / M audio in, $10 / M out
    speech = Call(operation="createSpeech", status="succeeded", model="tts-1", created=NOW,
                  request_body={"input": "x" * 1000})
    assert estimate_cost(speech) == Decimal("0.015")  # $15 per M characters


@pytest.mark.once
def test_unpriced_and_unpriceable_calls():
    assert estimate_cost(chat("my-own-finetune")) is None
    assert estimate_cost(chat("gpt-4.1", prompt=0, completion=0)) is None
    failed = chat("gpt-4.1", prompt=None, completion=None)
    failed.status = "failed"
    assert estimate_cost(failed) is None
    listing = Call(operation="listModels", status="succeeded", created=NOW)
    assert estimate_cost(listing) is None


@pytest.mark.once
def test_the_fast_path_matches_genai_prices_for_every_openai_model():
    """The reduction of a price to one rate per usage key answers what genai-prices itself
    calculates, for every OpenAI model, at dates across its price changes, with and without
    cached and reasoning tokens, for prompts on both sides of tier thresholds."""
    rng = random.Random(12)
    provider, _ = get_snapshot().find_provider_model("gpt-4o", None, "openai", None)
    days = [datetime.datetime(2024, 6, 1, tzinfo=UTC), datetime.datetime(2025, 7, 1, tzinfo=UTC),
            NOW]
    compared = 0
    for info in provider.models:
        for when in days:
            for prompt in (rng.randint(1, 5000), rng.randint(200_000, 400_000)):
                completion = rng.randint(0, 5000)
                cached = rng.choice([0, prompt // 2])
                call = chat(info.id, prompt=prompt, completion=completion, created=when,
                            cached_tokens=cached)
                usage = {"input_tokens": prompt, "output_tokens": completion}
                if cached:
                    usage["cache_read_tokens"] = cached
                try:
                    expected = calc_price(Usage(**usage), info.id, provider_id="openai",
                                          genai_request_timestamp=when).total_price
                except (LookupError, ValueError):
                    continue
                assert estimate_cost(call) == expected.quantize(Decimal("0.000001")), (
                    info.id, when, usage)
                compared += 1
    assert compared > 300


# -- the site's own prices ---------------------------------------------------------------------

def test_prices_setting_overrides_the_database(settings):
    prices(settings, {"gpt-4.1": {"input": "0.001", "output": "0.002", "cached_input": "0.0001"},
                      "gpt-5*": {"input": "0.01", "output": "0.01"},
                      "o3": None})
    # Per 1K tokens: 1000 x 0.001 + 1000 x 0.0001 + 1000 x 0.002 (per 1K)
    assert estimate_cost(chat("gpt-4.1", prompt=2000, completion=1000,
                              cached_tokens=1000)) == Decimal("0.0031")
    assert estimate_cost(chat("gpt-5-mini", prompt=1000, completion=1000)) == Decimal("0.02")
    assert estimate_cost(chat("o3")) is None  # the site said: no price
    assert estimate_cost(chat("o4-mini", completion=0)) == Decimal("1.1")  # the database
    # Without a cached price, cached tokens pay the input price.
    prices(settings, {"gpt-4.1": {"input": "0.001", "output": "0.002"}})
    assert estimate_cost(chat("gpt-4.1", prompt=2000, completion=0,
                              cached_tokens=1000)) == Decimal("0.002")
    prices(settings, None)
    assert estimate_cost(chat("gpt-4.1", prompt=2000, completion=0)) == Decimal("0.004")


def test_price_for_summarises_per_thousand(settings):
    assert price_for("gpt-4.1") == {"input": "0.002", "output": "0.008",
                                    "cached_input": "0.0005"}
    assert price_for("whisper-1") == {"minute": "0.006"}
    assert price_for("", "image") == {"image": "0.02"}
    assert price_for("nobody-knows-me") is None
    prices(settings, {"gpt-4.1": {"input": "1", "output": "2"}})
    assert price_for("gpt-4.1") == {"input": "1", "output": "2"}


# -- through the gateway -------------------------------------------------------------------------

def test_recorded_calls_are_priced_with_cached_and_reasoning_tokens(sdk, upstream):
    first = sdk.responses.create(model="o3", input="Tell me about the sea, at length.",
                                 reasoning={"effort": "high"})
    second = sdk.responses.create(model="o3", input="And the sky?", reasoning={"effort": "low"},
                                  previous_response_id=first.id)
    call = Call.objects.get(object_id=second.id)
    assert call.cached_tokens and call.cached_tokens == second.usage.input_tokens_details \
        .cached_tokens > 0
    assert call.reasoning_tokens == second.usage.output_tokens_details.reasoning_tokens > 0
    usage = second.usage
    # o3 today: $2 / M input, $0.50 / M cached input, $8 / M output (reasoning included).
    expected = (Decimal(2) * (usage.input_tokens - usage.input_tokens_details.cached_tokens)
                + Decimal("0.5") * usage.input_tokens_details.cached_tokens
                + Decimal(8) * usage.output_tokens) / M
    assert call.cost_usd == expected.quantize(Decimal("0.000001"))


def test_recorded_gpt_image_1_edit_is_priced_by_its_tokens(sdk, upstream):
    from openai_django.testing.fakes import png

    image = ("in.png", png(64, 64, (200, 30, 30)), "image/png")
    result = sdk.images.edit(model="gpt-image-1", image=image, prompt="Add a hat")
    call = Call.objects.get(operation="createImageEdit")
    usage = result.usage
    text, image = usage.input_tokens_details.text_tokens, usage.input_tokens_details.image_tokens
    assert image > 0 and text > 0
    expected = (Decimal(5) * text + Decimal(10) * image + Decimal(40) * usage.output_tokens) / M
    assert call.cost_usd == expected.quantize(Decimal("0.000001")) > 0


# -- manage.py openai_reprice ----------------------------------------------------------------

def reprice(*args):
    out = StringIO()
    call_command("openai_reprice", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_reprice_recomputes_recorded_calls_after_a_price_change(http, upstream, settings):
    for model in ("gpt-4.1", "gpt-4.1", "gpt-4o-mini"):
        response = http.post(f"{http.base}/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Hello there"}]})
        assert response.status_code == 200
    failed = http.post(f"{http.base}/chat/completions", json={"model": "gpt-4.1"},
                       headers={"Idempotency-Key": "x"})
    assert failed.status_code == 400  # rejected, no tokens, no cost
    calls = list(Call.objects.filter(model="gpt-4.1", response_status=200))
    assert len(calls) == 2 and all(c.cost_usd for c in calls)
    # Stored as the old table priced them (gpt-4*: $0.03 / $0.06 per 1K) ...
    for call in calls:
        Call.objects.filter(pk=call.pk).update(cost_usd=(
            Decimal("0.03") * call.prompt_tokens + Decimal("0.06") * call.completion_tokens)
            / 1000)
    before = sum(Call.objects.get(pk=c.pk).cost_usd for c in calls)
    mini = Call.objects.get(model="gpt-4o-mini")
    report = reprice("--model", "gpt-4.1*", "--dry-run")
    assert report["checked"] == 3 and report["changed"] == 2 and report["dry_run"]
    assert Decimal(report["total_before_usd"]) == before
    assert Decimal(report["total_after_usd"]) == sum(c.cost_usd for c in calls)
    assert sum(Call.objects.get(pk=c.pk).cost_usd for c in calls) == before  # unchanged

    report = reprice("--model", "gpt-4.1*", "--batch-size", "1")
    assert report["changed"] == 2 and not report["dry_run"]
    for call in calls:
        assert Call.objects.get(pk=call.pk).cost_usd == call.cost_usd
    assert reprice()["changed"] == 0  # a rerun changes nothing

    # A site price for gpt-4o-mini, applied to the calls since yesterday only.
    prices(settings, {"gpt-4o-mini": {"input": "1", "output": "1"}})
    old = reprice("--until", (timezone.now() - datetime.timedelta(days=1)).date().isoformat())
    assert old["checked"] == 0
    report = reprice("--since", (timezone.now() - datetime.timedelta(days=1)).isoformat())
    assert report["changed"] == 1
    mini.refresh_from_db()
    assert mini.cost_usd == Decimal(mini.total_tokens) / 1000


def test_reprice_matches_patterns_and_reads_dates(db):
    Call.objects.create(operation="createChatCompletion", method="POST", model="o3-mini",
                        status="succeeded", prompt_tokens=M, completion_tokens=0,
                        total_tokens=M, created=NOW)
    Call.objects.create(operation="createChatCompletion", method="POST", model="o3",
                        status="running", prompt_tokens=M, completion_tokens=0, total_tokens=M,
                        created=NOW)
    assert reprice("--model", "o*-mini")["changed"] == 1
    assert reprice("--model", "o3")["checked"] == 0  # still running: priced when it ends
    assert Call.objects.get(model="o3-mini").cost_usd == Decimal("1.1")
    out = StringIO()
    call_command("openai_reprice", "--since", "2026-11-21", stdout=out)
    assert out.getvalue().startswith("Checked 0 calls: 0 changed.")
    with pytest.raises(CommandError, match="Not a date"):
        call_command("openai_reprice", "--since", "last tuesday")


def test_lookups_are_cached_per_process():
    pricing._database_model.cache_clear()
    for _ in range(3):
        estimate_cost(chat("gpt-4.1"))
    info = pricing._database_model.cache_info()
    assert info.misses == 1 and info.hits >= 2
