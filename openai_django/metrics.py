"""Prometheus metrics of the calls: ``GET /metrics`` (the official ``prometheus-client``).

Off unless ``OPENAI_DJANGO["METRICS"]`` is set: then every call counts when its record is
finished (the ``call_finished`` / ``call_failed`` signals, sent for every outcome: answered,
failed, cancelled, swept as lost, and refused by the gateway), in the process that finished it
(a web process, or the Celery worker for background calls). The endpoint is protected::

    OPENAI_DJANGO = {"METRICS": {
        "TOKEN": os.environ["METRICS_TOKEN"],  # Authorization: Bearer <token> (or a list)
        "STAFF": True,                        # and/or: staff users' admin sessions
    }}

(``"PUBLIC": True`` serves it to anyone: only behind a network that only Prometheus reaches.)

Several processes: each counts the calls it finished, in memory, unless the environment has
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the process
starts): then every process of the host writes its counts to files in that directory and a
scrape of any process answers the sum over all of them, dead ones included (which is what
keeps counters equal to the records across workers and restarts). The directory must be
emptied when the server (re)starts, before the workers, and shared by the web and Celery
processes of the host. Why not count from the database at scrape time: a scrape would cost
an aggregate over the whole table (seconds at a few million rows, every 15 s), counters
would fall when retention deletes calls, and histograms would be a scan of latencies; the
files cost a few microseconds per call and a scrape reads a few files
(``python -m bench.metrics_bench``).

Labels: ``operation``, ``model``, ``status`` (and ``outcome`` on calls, ``code`` on errors and
refusals). A model name that no price knows and no upstream accepted (a typo, or a client
sending nonsense) is counted as ``other``, so clients cannot grow the series without bound.
Refused calls (``outcome="rejected"``: nothing was sent upstream) count in
``openai_django_refusals_total`` by ``reason``: ``budget`` (error code ``insufficient_quota``),
``rate_limit`` (``rate_limit_exceeded``), ``policy`` (403: a pre-call hook), ``invalid`` (other
4xx: a bad request) or ``other``; they stay out of the latency histograms.
"""

import hmac
import logging
import os
import threading

from django.core import checks
from django.http import HttpResponse, HttpResponseForbidden, HttpResponseNotFound
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from openai_django import signals
from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.metrics")

PREFIX = "openai_django_"
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
           600.0, float("inf"))
CALL_LABELS = ("operation", "model", "status")
REFUSAL_REASONS = {"insufficient_quota": "budget", "rate_limit_exceeded": "rate_limit"}

_lock = threading.Lock()
_metrics = None


def enabled():
    return bool(app_settings.METRICS)


def multiprocess_dir():
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir")


class Metrics:
    """The metric objects, made once per process (in their own registry)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(f"{PREFIX}calls", "Calls finished, by outcome.",
                             (*CALL_LABELS, "outcome"), registry=r)
        self.errors = Counter(f"{PREFIX}errors", "Calls that did not succeed (failed or "
                              "cancelled), by outcome and error code.",
                              (*CALL_LABELS, "outcome", "code"), registry=r)
        self.refusals = Counter(f"{PREFIX}refusals", "Calls the gateway refused before asking "
                                "the upstream (budget, rate limit, policy, invalid request).",
                                ("operation", "model", "reason", "code"), registry=r)
        self.latency = Histogram(f"{PREFIX}call_duration_seconds", "Time from the request to "
                                 "the end of the call (the whole stream for streams).",
                                 CALL_LABELS, buckets=BUCKETS, registry=r)
        self.upstream = Histogram(f"{PREFIX}upstream_duration_seconds", "Time the upstream "
                                  "took to answer (to its last byte).", CALL_LABELS,
                                  buckets=BUCKETS, registry=r)
        self.tokens = Counter(f"{PREFIX}tokens", "Tokens used, by type (prompt, completion, "
                              "cached: part of prompt, reasoning: part of completion).",
                              (*CALL_LABELS, "type"), registry=r)
        self.cost = Counter(f"{PREFIX}cost_usd", "Estimated cost in USD.", CALL_LABELS,
                            registry=r)


def get():
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


# -- counting ------------------------------------------------------------------------------------

def _model_label(call):
    model = (call.model or "")[:100]
    if not model or call.status == "succeeded":
        return model
    from openai_django.pricing import is_known

    return model if is_known(model) else "other"


def _code(call):
    error = call.error if isinstance(call.error, dict) else {}
    code = error.get("code") or error.get("type")
    if not code and call.response_status:
        code = str(call.response_status)
    return str(code or call.outcome or "")[:64]


def refusal_reason(call, code):
    if code in REFUSAL_REASONS:
        return REFUSAL_REASONS[code]
    status = call.response_status or 0
    if status == 403:
        return "policy"
    if status == 429:
        return "rate_limit"
    return "invalid" if 400 <= status < 500 else "other"


class _Children:
    """The metrics' children of one (operation, model, status, outcome): ``labels()`` is
    looked up once per label set, not on every call."""

    __slots__ = ("calls", "latency", "upstream", "tokens", "cost")

    def __init__(self, m, labels, outcome):
        self.calls = m.calls.labels(*labels, outcome)
        self.latency = m.latency.labels(*labels)
        self.upstream = m.upstream.labels(*labels)
        self.tokens = {kind: m.tokens.labels(*labels, kind)
                       for kind in ("prompt", "completion", "cached", "reasoning")}
        self.cost = m.cost.labels(*labels)


_children = {}


def observe(call):
    """Count one finished call (its record is saved)."""
    m = get()
    operation, model, status = call.operation or "", _model_label(call), call.status or ""
    outcome = call.outcome or ""
    key = (operation, model, status, outcome)
    children = _children.get(key)
    if children is None:
        children = _children.setdefault(key, _Children(m, key[:3], outcome))
    children.calls.inc()
    rejected = outcome == "rejected"
    if status != "succeeded":
        code = _code(call)
        m.errors.labels(operation, model, status, outcome, code).inc()
        if rejected:
            m.refusals.labels(operation, model, refusal_reason(call, code), code).inc()
    if not rejected:
        if call.latency_ms is not None:
            children.latency.observe(call.latency_ms / 1000)
        if call.upstream_latency_ms is not None:
            children.upstream.observe(call.upstream_latency_ms / 1000)
    tokens = children.tokens
    for kind, value in (("prompt", call.prompt_tokens), ("completion", call.completion_tokens),
                        ("cached", call.cached_tokens), ("reasoning", call.reasoning_tokens)):
        if value:
            tokens[kind].inc(value)
    if call.cost_usd:
        children.cost.inc(float(call.cost_usd))


def on_call_ended(sender, call, **kwargs):
    if app_settings.METRICS:
        try:
            observe(call)
        except Exception:  # metrics never break a call
            logger.exception("Metrics of call %s not counted", call.pk)


signals.call_finished.connect(on_call_ended, dispatch_uid="openai_django.metrics.finished")
signals.call_failed.connect(on_call_ended, dispatch_uid="openai_django.metrics.failed")


# -- the endpoint ---------------------------------------------------------------------------------

def _config():
    value = app_settings.METRICS
    return value if isinstance(value, dict) else {}


def _tokens(config):
    token = config.get("TOKEN")
    if not token:
        return []
    return [token] if isinstance(token, str) else [t for t in token if t]


def allowed(request):
    config = _config()
    if config.get("PUBLIC"):
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        given = given.strip().encode()
        # Compared in constant time, against each configured token.
        if any(hmac.compare_digest(given, t.encode()) for t in _tokens(config)):
            return True
    user = getattr(request, "user", None)
    return bool(config.get("STAFF") and user is not None and user.is_authenticated
                and user.is_active and user.is_staff)


class _Ours:
    """Only this app's families of a multiprocess directory other libraries may share."""

    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        return [f for f in self.collector.collect() if f.name.startswith(PREFIX)]


def exposition(accept=None):
    """``(body, content type)`` of a scrape."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    path = multiprocess_dir()
    if path:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        registry.register(_Ours(MultiProcessCollector(None, path=path)))
    else:
        registry = get().registry
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


@never_cache
@require_GET
def metrics_view(request):
    """``GET /metrics``: 404 when ``METRICS`` is off, 403 without the token or a staff
    session (``WWW-Authenticate: Bearer``)."""
    if not enabled():
        return HttpResponseNotFound("Metrics are off (OPENAI_DJANGO['METRICS']).",
                                    content_type="text/plain")
    if not allowed(request):
        response = HttpResponseForbidden("A metrics token or a staff session is needed.",
                                         content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    get()  # the families exist (at zero) before the first call
    body, content_type = exposition(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


# -- checks ----------------------------------------------------------------------------------------

@checks.register()
def check_metrics(app_configs, **kwargs):
    """W020: METRICS is on but the endpoint is open to nobody; W021: open to anyone."""
    value = app_settings.METRICS
    if not value:
        return []
    config = _config()
    if value is not True and not isinstance(value, dict):
        return [checks.Error("OPENAI_DJANGO['METRICS'] must be a dict (TOKEN, STAFF, PUBLIC).",
                             id="openai_django.E020")]
    if config.get("PUBLIC"):
        return [checks.Warning(
            "OPENAI_DJANGO['METRICS']['PUBLIC'] serves /metrics to anyone: model names, "
            "volumes and costs.", hint="Set a TOKEN for Prometheus instead, unless only "
            "Prometheus can reach this server.", id="openai_django.W021")]
    if not _tokens(config) and not config.get("STAFF"):
        return [checks.Warning(
            "OPENAI_DJANGO['METRICS'] counts calls but nobody may read /metrics.",
            hint='Set "TOKEN" (sent by Prometheus as a bearer token) or "STAFF": True.',
            id="openai_django.W020")]
    return []
