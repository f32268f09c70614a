"""Small formatters the admin's pages share (latency, cost, choice labels, user names).

They live apart from the ModelAdmins so that :mod:`.calls`, :mod:`.replay`, :mod:`.usage` and
the template tags all import them from here, and none of those imports another (the admin's
module graph is a DAG: formatting and forms at the bottom, ``calls`` at the top).
"""


def format_ms(value):
    """``12.3 ms``, ``250 ms``, ``12.5 s`` (or an em dash for no value)."""
    if value is None:
        return "—"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def format_cost(value):
    """``$1.23``, ``$0.000042``, ``$0`` (or an em dash for no value)."""
    if value is None:
        return "—"
    if value >= 1:
        return f"${value:,.2f}"
    if value == 0:
        return "$0"
    return f"${value:.6f}".rstrip("0")


def format_tokens(value):
    return "—" if value is None else f"{value:,}"


def choice_label(choices, value):
    """The label of ``value`` in a ``TextChoices`` (the value itself when it is not one)."""
    try:
        return str(choices(value).label)
    except ValueError:
        return value or ""


def user_label(user):
    if user is None:
        return ""
    getter = getattr(user, "get_username", None)
    return str(getter() if getter else user)
