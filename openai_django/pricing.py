"""Estimated cost of a call, from the maintained price database ``genai-prices``.

Where a call's price comes from, first match wins:

1. ``OPENAI_DJANGO["PRICES"]``: the site's own prices, a dict mapping a model name (or a
   prefix ending in ``*``, the longest matching prefix wins) to USD prices:
   ``{"input": per 1K prompt tokens, "output": per 1K completion tokens, "cached_input": per
   1K cached prompt tokens (default: the input price)}``, or ``{"image": per image}``, or
   ``{"minute": per audio minute}``, or ``{"characters": per 1K input characters}`` (speech).
   ``None`` (or ``{}``) for a model means "no price" (the call's cost stays empty).
2. ``genai-prices`` (the OpenAI provider's models): prices by the call's date (a price change
   applies to calls made after it), cached-input and reasoning prices, the response's
   ``service_tier`` (flex, priority), token-priced image and audio models (``gpt-image-1``'s
   image input tokens, ``gpt-4o-transcribe``'s audio tokens, ``whisper-1`` by the hour,
   ``tts-1`` by the character).
3. :data:`FALLBACK_PRICES`: the few models the database does not carry (``dall-e-2`` and
   ``dall-e-3``, per image by size and quality).

The hot path stays cheap: the model's entry is looked up once per process (and again after a
settings change), and for a price without tiers the database's calculation is reduced once per
(model, day, service tier, usage keys) to one rate per usage key, so pricing a call is a few
multiplications (``python -m bench.pricing_bench``). Prices with tiers (long-context rates)
and time-of-day prices are calculated by ``genai-prices`` on each call.

``python manage.py openai_reprice`` recomputes stored costs after a price change (an upgrade
of ``genai-prices`` or a change of ``PRICES``).
"""

import logging
import threading
from bisect import bisect_left
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache

from django.core.signals import setting_changed

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.pricing")

PROVIDER = "openai"
THOUSAND = Decimal(1000)
MICRO = Decimal("0.000001")

# Per image, by "<quality> <size>" (or size alone); "image" is the price of any other.
FALLBACK_PRICES = {
    "dall-e-3": {"image": "0.04", "by_size": {
        "standard 1024x1024": "0.04", "standard 1024x1792": "0.08",
        "standard 1792x1024": "0.08", "hd 1024x1024": "0.08", "hd 1024x1792": "0.12",
        "hd 1792x1024": "0.12"}},
    "dall-e-2": {"image": "0.02", "by_size": {
        "256x256": "0.016", "512x512": "0.018", "1024x1024": "0.02"}},
}

# A dall-e price table the way it was kept before genai-prices; kept for imports.
DEFAULT_PRICES = {name: {"image": entry["image"]} for name, entry in FALLBACK_PRICES.items()}

# The usage keys of genai-prices this module reports (see _usage); their base counts for the
# reduction to rates: a parent holds far more than its children, so adding one token to any
# key keeps the usage consistent.
_PROBE_BASE = {
    "input_tokens": 10**9, "output_tokens": 10**9, "cache_read_tokens": 10**6,
    "output_reasoning_tokens": 10**6, "input_image_tokens": 10**6, "input_audio_tokens": 10**6,
    "output_audio_tokens": 10**6, "cache_image_read_tokens": 10**3,
    "cache_audio_read_tokens": 10**3, "audio_seconds": 10**6, "input_characters": 10**6,
}


def clear_caches():
    """Forget every cached lookup (after a site swapped genai-prices' data at run time, e.g.
    with its ``UpdatePrices``; a settings change clears them by itself)."""
    for cached in (_override_for, _database_model, _dated_only, _thresholds, _rates):
        cached.cache_clear()


def _reset(*, setting, **kwargs):
    if setting == "OPENAI_DJANGO":
        clear_caches()


setting_changed.connect(_reset, dispatch_uid="openai_django.pricing.reset")


def price_table():
    """The local price entries (the fallback table and the ``PRICES`` overrides), by model
    name or pattern; the price database itself is not listed here."""
    table = dict(DEFAULT_PRICES)
    table.update(app_settings.PRICES or {})
    return table


def _match(table, model):
    if model in table:
        return model, table[model]
    best = None
    for pattern in table:
        if pattern.endswith("*") and model.startswith(pattern[:-1]):
            if best is None or len(pattern) > len(best):
                best = pattern
    return (best, table[best]) if best is not None else (None, None)


@lru_cache(maxsize=4096)
def _override_for(model):
    """``(found, entry)`` of ``PRICES`` for the model (an entry of ``None``: no price)."""
    pattern, entry = _match(app_settings.PRICES or {}, model)
    return pattern is not None, entry


@lru_cache(maxsize=4096)
def _database_model(model):
    """The genai-prices model for a model name, or ``None``."""
    from genai_prices.data_snapshot import get_snapshot

    try:
        return get_snapshot().find_provider_model(model, None, PROVIDER, None)
    except LookupError:
        return None


def is_known(model):
    """Whether a price is known for the model name (the site's, the database's or the
    fallback's): a real model, not a typo."""
    return bool(model) and (_override_for(model)[0] or _database_model(model) is not None
                            or _match(FALLBACK_PRICES, model)[0] is not None)


def _default_model(model, basis):
    if not model and basis == "image":
        return "dall-e-2"  # the default model of image operations that name none
    return model


def price_for(model, basis=None, when=None):
    """The price that applies to ``model`` (at ``when``, default now) in the ``PRICES`` format
    (USD per 1K tokens, per image, per minute), or ``None``: a summary for scripts and
    seeders; :func:`estimate_cost` is the exact calculation."""
    model = _default_model(model or "", basis)
    found, entry = _override_for(model)
    if found:
        return entry or None
    found = _database_model(model)
    if found is not None:
        prices = found[1].get_prices(when or datetime.now(timezone.utc))
        summary = {}
        for key, name, scale in (("input_mtok", "input", 1000), ("output_mtok", "output", 1000),
                                 ("cache_read_mtok", "cached_input", 1000),
                                 ("audio_hours", "minute", 60),
                                 ("input_mchars", "characters", 1000)):
            value = getattr(prices, key, None)
            if isinstance(value, Decimal):
                summary[name] = str(value / scale)
            elif value is not None:  # tiered: the base rate
                summary[name] = str(value.base / scale)
        return summary or None
    _, entry = _match(FALLBACK_PRICES, model)
    return {"image": entry["image"]} if entry else None


def estimate_cost(call, kind=None):
    """The estimated USD cost of a finished call, or ``None`` when no price applies (the
    call's kind says what it is priced by)."""
    if kind is None:
        from openai_django.kinds import of_call

        kind = of_call(call)
    basis = kind.price_basis
    if basis is None:
        return None
    if call.status == "failed" and not call.total_tokens:
        return None
    model = _default_model(call.model or "", basis)
    found, entry = _override_for(model)
    if found:
        cost = _override_cost(call, entry, basis) if entry else None
    else:
        found = _database_model(model)
        if found is not None:
            cost = _database_cost(call, model, found, basis)
        elif basis == "image":
            _, entry = _match(FALLBACK_PRICES, model)
            cost = _image_cost(call, entry) if entry else None
        else:
            cost = None
    return None if cost is None else cost.quantize(MICRO)


# -- the site's own prices -------------------------------------------------------------------

def _body(call):
    body = call.response_body
    return body if isinstance(body, dict) else {}


def _request(call):
    body = call.request_body
    return body if isinstance(body, dict) else {}


def _image_count(call):
    return len(_body(call).get("data") or ()) or int(_request(call).get("n") or 1)


def _image_cost(call, entry):
    request = _request(call)
    size, quality = request.get("size") or "1024x1024", request.get("quality") or "standard"
    by_size = entry.get("by_size") or {}
    price = by_size.get(f"{quality} {size}") or by_size.get(size) or entry["image"]
    return Decimal(str(price)) * _image_count(call)


def _seconds(call):
    body = _body(call)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    seconds = usage.get("seconds") if usage.get("type") == "duration" else None
    if seconds is None:
        seconds = body.get("duration")
    return seconds if isinstance(seconds, (int, float)) and seconds >= 0 else None


def _override_cost(call, price, basis):
    if "image" in price:
        return _image_cost(call, price)
    if "minute" in price:
        seconds = _seconds(call)
        if seconds is None:
            return None
        return Decimal(str(price["minute"])) * Decimal(str(seconds)) / 60
    if "characters" in price:
        text = _request(call).get("input")
        if not isinstance(text, str):
            return None
        return Decimal(str(price["characters"])) * len(text) / THOUSAND
    prompt = call.prompt_tokens or 0
    completion = call.completion_tokens or 0
    if not prompt and not completion:
        return None
    cached = min(call.cached_tokens or 0, prompt)
    rate_in = Decimal(str(price.get("input", 0)))
    rate_cached = Decimal(str(price["cached_input"])) if "cached_input" in price else rate_in
    return (rate_in * (prompt - cached) + rate_cached * cached
            + Decimal(str(price.get("output", 0))) * completion) / THOUSAND


# -- genai-prices ------------------------------------------------------------------------------

def _count(mapping, *names):
    for name in names:
        value = mapping.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _usage(call, basis):
    """The call's usage as genai-prices' usage keys (only those with a count)."""
    usage = {}
    prompt, completion = call.prompt_tokens, call.completion_tokens
    if prompt or completion:
        usage["input_tokens"] = prompt or 0
        usage["output_tokens"] = completion or 0
        cached = min(call.cached_tokens or 0, prompt or 0)
        if cached:
            usage["cache_read_tokens"] = cached
        reasoning = min(call.reasoning_tokens or 0, completion or 0)
        if reasoning:
            usage["output_reasoning_tokens"] = reasoning
        _modalities(call, usage)
    elif basis == "minute":
        seconds = _seconds(call)
        if seconds is not None:
            usage["audio_seconds"] = Decimal(str(seconds))
    elif basis == "characters":
        text = _request(call).get("input")
        if isinstance(text, str) and text:
            usage["input_characters"] = len(text)
    return usage


def _modalities(call, usage):
    """Image and audio token counts of the answer's usage (images, audio, chat with audio)."""
    raw = _body(call).get("usage")
    if not isinstance(raw, dict):
        return
    details_in = raw.get("input_tokens_details") or raw.get("input_token_details") \
        or raw.get("prompt_tokens_details") or {}
    details_out = raw.get("output_tokens_details") or raw.get("completion_tokens_details") or {}
    if not isinstance(details_in, dict) or not isinstance(details_out, dict):
        return
    for key, mapping, name in (("input_image_tokens", details_in, "image_tokens"),
                               ("input_audio_tokens", details_in, "audio_tokens"),
                               ("output_audio_tokens", details_out, "audio_tokens")):
        value = _count(mapping, name)
        if value:
            parent = usage["input_tokens" if key.startswith("input") else "output_tokens"]
            usage[key] = min(value, parent)
    if "cache_read_tokens" in usage:
        # Cached tokens are counted as text: the join with a modality must be explicit.
        if "input_image_tokens" in usage:
            usage["cache_image_read_tokens"] = 0
        if "input_audio_tokens" in usage:
            usage["cache_audio_read_tokens"] = 0


def _service_tier(call):
    tier = _body(call).get("service_tier") or _request(call).get("service_tier")
    return tier if isinstance(tier, str) and tier not in ("auto", "default") else None


def _database_cost(call, model, found, basis):
    usage = _usage(call, basis)
    if not usage:
        return None
    provider, info = found
    when = call.created or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    tier = _service_tier(call)
    if _dated_only(model):
        day = when.astimezone(timezone.utc).date()
        thresholds = _thresholds(model, tier, day)
        band = bisect_left(thresholds, usage.get("input_tokens", 0)) if thresholds else 0
        keys = tuple(usage)
        rates = _rates(model, tier, day, keys, band)
        if rates is not None:
            return sum((rate * usage[key] for key, rate in zip(keys, rates)), Decimal(0))
    return _calculate(provider, info, usage, when, tier)


def _calculate(provider, info, usage, when, tier):
    from genai_prices import Usage

    try:
        return info.calc_price(Usage(**usage), provider, genai_request_timestamp=when,
                               price_context={"service_tier": tier} if tier else None
                               ).total_price
    except (ValueError, LookupError) as exc:
        _warn_once(info.id, exc)
        return None


_warned = set()
_warned_lock = threading.Lock()


def _warn_once(model, exc):
    with _warned_lock:
        if model in _warned:
            return
        _warned.add(model)
    logger.warning("No price for model %s from genai-prices: %s", model, exc)


@lru_cache(maxsize=4096)
def _dated_only(model):
    """The model's prices change by date only (no time-of-day prices): a day's rates hold
    all day (genai-prices compares start dates with the call's UTC date)."""
    from genai_prices.types import ConditionalPrice, StartDateConstraint

    info = _database_model(model)[1]
    constraints = [p.constraint for p in info.prices if isinstance(p, ConditionalPrice)] \
        if isinstance(info.prices, list) else []
    constraints += [v.constraint for v in info.price_variants or ()]
    return all(c is None or isinstance(c, StartDateConstraint) for c in constraints)


def _prices(model, tier, day):
    when = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    return _database_model(model)[1].get_prices(
        when, {"service_tier": tier} if tier else None)


@lru_cache(maxsize=8192)
def _thresholds(model, tier, day):
    """The input-token counts above which a tiered price of the model changes (genai-prices'
    "cliff" tiers: past a threshold, all tokens pay the tier's rate)."""
    from genai_prices.types import TieredPrices

    found = set()
    for value in vars(_prices(model, tier, day)).values():
        if isinstance(value, TieredPrices):
            found.update(t.start for t in value.tiers)
    return tuple(sorted(found))


@lru_cache(maxsize=8192)
def _rates(model, tier, day, keys, band):
    """One USD rate per usage key for the model's price on ``day``, for prompts in the
    ``band``-th range of its tier thresholds (``None`` when the price is not linear in the
    counts): the database's own calculation, measured once at a base usage and with one more
    of each key."""
    from genai_prices import Usage
    from genai_prices.types import ModelPrice, TieredPrices

    prices = _prices(model, tier, day)
    thresholds = _thresholds(model, tier, day)
    prompt = thresholds[band - 1] + 1 if band else 0  # a prompt size within the band

    def flat(value):
        if not isinstance(value, TieredPrices):
            return value
        for t in reversed(value.tiers):
            if prompt > t.start:
                return t.price
        return value.base

    flat_prices = ModelPrice(**{key: flat(value) for key, value in vars(prices).items()})
    base = {key: _PROBE_BASE[key] for key in keys}

    def total(counts):
        return flat_prices.calc_price(Usage(**counts))["total_price"]

    try:
        at_base = total(base)
        rates = tuple(total({**base, key: base[key] + 1}) - at_base for key in keys)
        # Linear and without a fixed part, else calculated on each call.
        if sum(r * c for r, c in zip(rates, base.values())) != at_base \
                or total({key: count * 2 for key, count in base.items()}) != at_base * 2:
            return None
    except (ValueError, LookupError):
        return None
    return rates
