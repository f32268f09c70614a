"""Estimated cost of a call, from a price table in settings.

``OPENAI_DJANGO["PRICES"]`` maps a model name (or a prefix ending in ``*``) to USD prices:
``{"input": per 1K prompt tokens, "output": per 1K completion tokens}``, or ``{"image": per
image}`` for image models, or ``{"minute": per audio minute}``. The defaults below are the public
list prices of the spec's era and of today's common models; a site sets its own.
"""

from decimal import Decimal

from openai_django.conf import app_settings

DEFAULT_PRICES = {
    "gpt-4o-mini*": {"input": "0.00015", "output": "0.0006"},
    "gpt-4o*": {"input": "0.0025", "output": "0.01"},
    "gpt-4-turbo*": {"input": "0.01", "output": "0.03"},
    "gpt-4-32k*": {"input": "0.06", "output": "0.12"},
    "gpt-4*": {"input": "0.03", "output": "0.06"},
    "gpt-3.5-turbo*": {"input": "0.0015", "output": "0.002"},
    "o1-mini*": {"input": "0.003", "output": "0.012"},
    "o1*": {"input": "0.015", "output": "0.06"},
    "text-davinci*": {"input": "0.02", "output": "0.02"},
    "code-davinci*": {"input": "0.02", "output": "0.02"},
    "davinci*": {"input": "0.02", "output": "0.02"},
    "curie*": {"input": "0.002", "output": "0.002"},
    "babbage*": {"input": "0.0005", "output": "0.0005"},
    "ada*": {"input": "0.0004", "output": "0.0004"},
    "text-embedding-3-small": {"input": "0.00002", "output": "0"},
    "text-embedding-3-large": {"input": "0.00013", "output": "0"},
    "text-embedding-ada-002": {"input": "0.0001", "output": "0"},
    "text-moderation*": {"input": "0", "output": "0"},
    "whisper-1": {"minute": "0.006"},
    "dall-e-3": {"image": "0.04"},
    "dall-e-2": {"image": "0.02"},
}

THOUSAND = Decimal(1000)


def price_table():
    table = dict(DEFAULT_PRICES)
    table.update(app_settings.PRICES or {})
    return table


def price_for(model, basis=None):
    table = price_table()
    if not model and basis == "image":
        model = "dall-e-2"  # the default model of image operations that name none
    if model in table:
        return table[model]
    best = None
    for pattern, price in table.items():
        if pattern.endswith("*") and model.startswith(pattern[:-1]):
            if best is None or len(pattern) > len(best[0]):
                best = (pattern, price)
    return best[1] if best else None


def estimate_cost(call, kind=None):
    """The estimated USD cost of a finished call, or ``None`` when no price applies (the
    call's kind says what it is priced by)."""
    if kind is None:
        from openai_django.kinds import of_call

        kind = of_call(call)
    if kind.price_basis is None:
        return None
    price = price_for(call.model or "", kind.price_basis)
    if not price or call.status == "failed" and not call.total_tokens:
        return None
    cost = Decimal(0)
    if "image" in price:
        body = call.response_body if isinstance(call.response_body, dict) else {}
        count = len(body.get("data") or ()) or int((call.request_body or {}).get("n") or 1)
        cost = Decimal(str(price["image"])) * count
    elif "minute" in price:
        seconds = None
        body = call.response_body if isinstance(call.response_body, dict) else {}
        seconds = body.get("duration")
        if not isinstance(seconds, (int, float)):
            return None
        cost = Decimal(str(price["minute"])) * Decimal(str(seconds)) / 60
    else:
        prompt = call.prompt_tokens or 0
        completion = call.completion_tokens or 0
        if not prompt and not completion:
            return None
        cost = (Decimal(str(price.get("input", 0))) * prompt
                + Decimal(str(price.get("output", 0))) * completion) / THOUSAND
    return cost.quantize(Decimal("0.000001"))
