"""The site's pre-call policy: a hook that sees every call before anything is sent, and may
refuse it with a reason.

Two ways to hook in, both run by :func:`check` from :func:`openai_django.gateway.begin`, so
they see every call the gateway makes for a caller: HTTP (WSGI and ASGI), the Python API
(``create``, ``acreate``, ``submit``: a background call is checked when it is submitted, in the
submitting process, before it is queued), whatever authenticated it.

* ``OPENAI_DJANGO["BEFORE_CALL"] = "myapp.policy.check"`` (or a list of them, run in order):
  ``check(request)`` is called with a :class:`CallRequest`.
* the :data:`openai_django.signals.before_call` signal, ``sender=CallRequest``, with
  ``request=<CallRequest>``; receivers run after the setting's hooks.

A hook allows a call by returning ``None`` (or ``True``) and refuses it by returning a reason
(a string), ``False``, or by raising :class:`Refused` (or any of the gateway's errors, e.g.
``InvalidRequest(..., param="max_tokens")`` for a 400). A refused call is answered 403 in the
OpenAI shape (``code: "refused_by_policy"``, the reason as ``message``; the Python API raises
the error), recorded as a rejected call, and never sent upstream. A hook that fails (raises
anything else) refuses the call too, with a 500 ``policy_error``, and the traceback is logged:
a policy that cannot run lets nothing through.

Hooks run in the request's thread (under ASGI in the database pool, like the rest of the
record's start), so they may use the ORM. They should treat the call as read-only: to change a
call, refuse it and say why. Calls the gateway makes on its own behalf (a queued call being
performed by a worker, an admin's replay from the admin pages) are not checked again.

An example, allowing models per group and bounding tokens::

    # myapp/policy.py
    ALLOWED = {"interns": {"gpt-4o-mini"}}          # group name -> models; others: any

    def check(request):
        if request.model and request.user is not None:
            for group in request.groups:
                allowed = ALLOWED.get(group)
                if allowed is not None and request.model not in allowed:
                    return f"The model {request.model} is not available to {group}."
        if (request.max_tokens or 0) > 4000:
            return "At most 4000 output tokens per call."
        if "password" in request.text().lower():
            return "Do not send passwords to the model."

    # settings.py
    OPENAI_DJANGO = {"BEFORE_CALL": "myapp.policy.check"}

The same policy, with its rules as module constants, is :func:`example_policy`: copy it into
the site and adapt the rules.
"""

import logging
from functools import cached_property

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from openai_django import recorder, signals
from openai_django.conf import app_settings
from openai_django.errors import OpenAIDjangoError, PermissionDenied

logger = logging.getLogger("openai_django.policy")

#: Body fields that bound the tokens a call may produce, by API.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
#: Body fields whose text is the call's input (``CallRequest.text``).
TEXT_FIELDS = ("messages", "input", "prompt", "instructions", "instruction", "query",
               "question", "system", "content", "text", "documents")


class Refused(PermissionDenied):
    """A call the site's policy refused (403, ``refused_by_policy``)."""

    default_code = "refused_by_policy"
    default_message = "This call was refused by the site's policy."


class PolicyError(OpenAIDjangoError):
    """The site's policy hook failed: the call is refused (the policy could not say yes)."""

    status_code = 500
    error_type = "server_error"
    default_code = "policy_error"
    default_message = ("The site's pre-call policy failed, so the call was not sent. The "
                       "error is in the site's logs.")


class CallRequest:
    """What a policy hook sees of a call about to be made (read-only)."""

    def __init__(self, invocation):
        #: The gateway's :class:`~openai_django.invocation.Invocation`, for anything else.
        self.invocation = invocation

    @property
    def operation(self):
        """The spec's ``operationId``, e.g. ``"createChatCompletion"``."""
        return self.invocation.operation.id

    @property
    def method(self):
        return self.invocation.operation.method

    @property
    def path(self):
        """The upstream path, e.g. ``/chat/completions``."""
        invocation = self.invocation
        return invocation.operation.upstream_path(invocation.path_kwargs)

    @cached_property
    def model(self):
        """The model asked for (from the body or the path), ``""`` when there is none."""
        invocation = self.invocation
        return invocation.operation.model_from(invocation.body, invocation.path_kwargs)

    @property
    def body(self):
        """The parsed JSON body, or the form fields of a multipart body (``None``: none)."""
        return self.invocation.body

    @property
    def files(self):
        """The uploaded files: ``[(field, name, content_type, size)]``."""
        return [(u.field, u.name, u.content_type, u.size) for u in self.invocation.files]

    @property
    def user(self):
        """The caller's user (``None`` for a Python API call made for nobody)."""
        return self.invocation.user

    @property
    def api_key(self):
        """The :class:`~openai_django.models.APIKey` used, ``None`` for a session or the
        Python API without a key."""
        return self.invocation.api_key

    @cached_property
    def groups(self):
        """The names of the user's Django groups (one query, made when first read)."""
        user = self.user
        if user is None or not hasattr(user, "groups"):
            return frozenset()
        return frozenset(user.groups.values_list("name", flat=True))

    @property
    def source(self):
        """``"http"``, ``"python"`` or ``"replay"``."""
        return self.invocation.source

    @property
    def mode(self):
        """``"sync"``, ``"stream"`` or ``"async"`` (a background call)."""
        return self.invocation.mode

    @property
    def stream(self):
        return self.invocation.stream

    @property
    def headers(self):
        """The forwarded request headers (lower-case names)."""
        return dict(self.invocation.headers)

    @cached_property
    def max_tokens(self):
        """The output-token bound the call asks for (``max_tokens``,
        ``max_completion_tokens`` or ``max_output_tokens``), ``None`` when it sets none."""
        body = self.body
        if not isinstance(body, dict):
            return None
        for name in MAX_TOKENS_FIELDS:
            value = body.get(name)
            if value is not None:
                try:
                    return int(value)
                except (TypeError, ValueError):
                    return None
        return None

    def text(self):
        """All the text the call sends as input (messages, input, prompt, instructions...),
        joined by newlines: what a content rule reads."""
        parts = []
        body = self.body
        if isinstance(body, dict):
            for name in TEXT_FIELDS:
                if name in body:
                    _texts(body[name], parts)
        return "\n".join(parts)

    def __repr__(self):
        return f"<CallRequest {self.operation} model={self.model!r} user={self.user!r}>"


def _texts(value, parts, depth=0):
    if depth > 20:
        return
    if isinstance(value, str):
        if not value.startswith("data:"):  # an inline file, not text
            parts.append(value)
    elif isinstance(value, list):
        for item in value:
            _texts(item, parts, depth + 1)
    elif isinstance(value, dict):
        for name in ("content", "text", "input", "input_text", "output", "arguments"):
            if name in value:
                _texts(value[name], parts, depth + 1)


_hooks_cache = []


def hooks():
    """The callables of ``BEFORE_CALL`` (an empty tuple: none)."""
    if _hooks_cache:
        return _hooks_cache[0]
    resolved = []
    for item in app_settings.imported("BEFORE_CALL"):
        if not callable(item):
            raise ImproperlyConfigured(
                f"settings.OPENAI_DJANGO['BEFORE_CALL']: {item!r} is not callable.")
        resolved.append(item)
    _hooks_cache[:] = [tuple(resolved)]
    return _hooks_cache[0]


def _verdict(answer, hook):
    if answer is None or answer is True:
        return
    if answer is False:
        raise Refused()
    if isinstance(answer, str):
        raise Refused(answer or None)
    raise TypeError(f"The policy hook {hook!r} returned {answer!r}: return None to allow the "
                    f"call, or a reason (a string) to refuse it.")


def check(invocation):
    """Run the site's policy on a call about to be made; a refusal is recorded as a rejected
    call and raised (nothing is sent). Costs nothing when no hook is configured."""
    configured = _hooks_cache[0] if _hooks_cache else hooks()
    if not configured and not signals.before_call.receivers:
        return
    request = CallRequest(invocation)
    try:
        for hook in configured:
            _verdict(hook(request), hook)
        if signals.before_call.receivers:
            for receiver, answer in signals.before_call.send(sender=CallRequest,
                                                             request=request):
                _verdict(answer, receiver)
        return
    except OpenAIDjangoError as exc:
        error = exc
    except Exception:
        logger.exception("The pre-call policy failed for %r; the call is refused", request)
        error = PolicyError()
    error.call = recorder.reject(invocation, error)
    raise error


# -- the documented example ----------------------------------------------------------------

#: Group name -> the models its members may use (members of no listed group: any model).
EXAMPLE_ALLOWED_MODELS = {"interns": {"gpt-4o-mini", "gpt-4.1-nano"}}
EXAMPLE_MAX_TOKENS = 4000
EXAMPLE_BLOCKED_WORDS = ("password",)


def example_policy(request):
    """The module docstring's example: models per group, a bound on output tokens, and
    blocked words; usable as is (``BEFORE_CALL = "openai_django.policy.example_policy"``)."""
    if request.model and request.user is not None:
        for group in sorted(request.groups):
            allowed = EXAMPLE_ALLOWED_MODELS.get(group)
            if allowed is not None and request.model not in allowed:
                return f"The model {request.model} is not available to the group {group}."
    if (request.max_tokens or 0) > EXAMPLE_MAX_TOKENS:
        return f"At most {EXAMPLE_MAX_TOKENS} output tokens per call."
    text = request.text().lower()
    for word in EXAMPLE_BLOCKED_WORDS:
        if word in text:
            return f"Calls mentioning '{word}' are not sent to the model."
    return None


def _reset(*, setting, **kwargs):
    if setting == "OPENAI_DJANGO":
        _hooks_cache.clear()


setting_changed.connect(_reset, dispatch_uid="openai_django.policy.reset")


@checks.register()
def check_policy_settings(app_configs, **kwargs):
    """E032: a BEFORE_CALL hook that cannot be imported or called."""
    try:
        hooks()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Name a function by its dotted path.",
                             id="openai_django.E032")]
    return []
