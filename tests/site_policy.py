"""Pre-call policies of the tests (``OPENAI_DJANGO["BEFORE_CALL"]``), importable by the server
and worker processes the tests start."""

from openai_django.errors import InvalidRequest
from openai_django.policy import Refused

#: What :func:`spy` saw, in this process: one dict per call.
SEEN = []


def refuse_gpt41(request):
    """Refuses the model ``gpt-4.1`` (a string reason), allows the rest."""
    if request.model == "gpt-4.1":
        return f"The model {request.model} is not allowed on this site."
    return None


def spy(request):
    """Allows everything, and keeps what it saw."""
    SEEN.append({
        "operation": request.operation, "model": request.model, "user": request.user,
        "api_key": request.api_key, "mode": request.mode, "source": request.source,
        "groups": set(request.groups), "max_tokens": request.max_tokens,
        "text": request.text(), "path": request.path, "stream": request.stream,
        "files": request.files,
    })


def raises_refused(request):
    raise Refused("No calls on Sundays.", code="closed_today")


def bounds_tokens(request):
    if (request.max_tokens or 0) > 100:
        raise InvalidRequest("At most 100 tokens per call here.", param="max_tokens")


def broken(request):
    raise RuntimeError("the policy's own database is down")


def answers_nonsense(request):
    return 42
