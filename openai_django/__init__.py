"""openai-django: the OpenAI API behind a Django site's own walls.

The public Python API (``create``, ``submit``; ``acreate``, ``asubmit`` for async code)
lives in :mod:`openai_django.api` and is imported lazily here so that ``import openai_django``
never touches Django settings or models before the app registry is ready.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "acreate", "asubmit", "clear_allowance", "create", "get_allowance",
           "set_budget", "set_rate_limit", "spend", "submit"]

_CONTROLS = ("set_budget", "set_rate_limit", "get_allowance", "clear_allowance", "spend")


def __getattr__(name):
    if name in ("create", "submit", "acreate", "asubmit"):
        from openai_django import api

        return getattr(api, name)
    if name in _CONTROLS:  # budgets and rate limits
        from openai_django import controls

        return getattr(controls, name)
    raise AttributeError(f"module 'openai_django' has no attribute {name!r}")
