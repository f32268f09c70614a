"""Many upstreams: which one serves a call, in what dialect, and what happens when it fails.

``OPENAI_DJANGO["UPSTREAMS"]`` names the upstreams (README, "Many upstreams")::

    "UPSTREAMS": {
        "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
                   "models": ["gpt-*", "o*", "text-embedding-*"]},
        "azure": {"kind": "azure", "base_url": "https://acme.openai.azure.com",
                  "api_key_env": "AZURE_OPENAI_API_KEY", "api_version": "2024-10-21",
                  "models": [{"match": "gpt-4o", "rename": "prod-4o"}]},
        "local": {"kind": "compatible", "base_url": "http://10.0.0.5:8000/v1",
                  "models": [{"match": "local/*", "rename": "*"}], "proxy": False},
    },
    "FALLBACKS": {"gpt-4o": ["azure", "openai"]},

Routing: a call with a model goes to the first upstream whose ``models`` match it (names, or
:func:`fnmatch.fnmatchcase` patterns; ``rename`` is what that upstream is sent, a ``*`` in it
standing for what the pattern's one ``*`` matched), then along the model's ``FALLBACKS`` list;
an unlisted model goes to ``DEFAULT_UPSTREAM``. A call without a model (files, batches,
uploads...) about an object (an id in its path) goes to the upstream that served the call that
created it; any other to the default.

Fallback (:func:`send`): on a connection error, a timeout, 429 or a 5xx the call is sent to the
next upstream of its route; each attempt (upstream, model, status or error, milliseconds) is
recorded in ``Call.upstream_attempts`` and ``Call.upstream`` names the one whose answer the
client got. Only before anything reached the client (a stream's status comes before its first
event; once a stream has begun it is relayed, broken or not), and for an operation whose kind
says it may not be repeated (``Kind.repeatable``: a POST that creates something) only when the
first upstream certainly did not act on it: no connection could be made, or it answered 429.
An upstream failing ``threshold`` times in a row is skipped for ``cooldown`` seconds
(:mod:`openai_django.breaker`).

With ``UPSTREAMS`` unset, ``BASE_URL``/``API_KEY`` are the one upstream, named ``default``, and
the path is the one-client path it always was (no route to compute, no breaker).
"""

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from openai_django.conf import app_settings
from openai_django.errors import UpstreamTimeout, UpstreamUnavailable
from openai_django.transport import get_async_client
from openai_django.upstream import get_client

logger = logging.getLogger("openai_django.upstreams")

DEFAULT = "default"  # the name of the one BASE_URL upstream
KINDS = ("openai", "azure", "compatible")
OPTIONS = {"base_url", "kind", "api_key", "api_key_env", "admin_api_key", "admin_api_key_env",
           "organization", "headers", "connect_timeout", "read_timeout", "pool_size", "proxy",
           "ca_bundle", "client_cert", "models", "api_version", "azure_style", "auth",
           "http2"}
# Operations Azure serves under /openai/deployments/{deployment}/ (the model is the path).
AZURE_DEPLOYMENT_PATHS = frozenset({
    "/chat/completions", "/completions", "/embeddings", "/images/generations",
    "/images/edits", "/audio/transcriptions", "/audio/translations", "/audio/speech"})
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               403: "permission_error", 404: "invalid_request_error",
               409: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error"}


@dataclass(frozen=True)
class Upstream:
    """One upstream, as configured (its key resolved from settings or the environment)."""

    name: str
    base_url: str
    kind: str = "openai"
    api_key: str | None = field(default=None, repr=False)
    admin_api_key: str | None = field(default=None, repr=False)
    organization: str | None = None
    headers: tuple = ()
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    pool_size: int = 64
    proxy: object = None
    ca_bundle: str | None = None
    client_cert: object = None
    models: tuple = ()  # ((pattern, rename or None), ...)
    api_version: str | None = None
    azure_style: str = "deployments"  # or "v1": /openai/v1/...
    http2: bool = False  # the async client speaks HTTP/2 to it (transport/http2.py)

    def serves(self, model):
        """The model name this upstream is sent for ``model``, or ``None``."""
        for pattern, rename in self.models:
            if pattern == model or fnmatchcase(model, pattern):
                if not rename:
                    return model
                if "*" in rename and pattern.count("*") == 1:
                    head, tail = pattern.split("*")
                    return rename.replace("*", model[len(head):len(model) - len(tail) or None])
                return rename
        return None

    def client_options(self):
        key_header = None
        if self.kind == "azure":
            key_header = "api-key"
        return {"base_url": self.base_url, "api_key": self.api_key,
                "organization": self.organization, "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout, "pool_size": self.pool_size,
                "admin_api_key": self.admin_api_key, "proxy": self.proxy,
                "ca_bundle": self.ca_bundle, "client_cert": self.client_cert,
                "headers": dict(self.headers), "key_header": key_header}


@dataclass
class Config:
    upstreams: dict  # name -> Upstream, in routing order
    default: str
    fallbacks: tuple = ()  # ((pattern, (names...)), ...)
    single: bool = True
    routes: dict = field(default_factory=dict)  # model -> tuple of Hop (memo)


@dataclass(frozen=True)
class Hop:
    """One upstream of a call's route and the model it is sent."""

    upstream: Upstream
    model: str = ""


# -- settings ------------------------------------------------------------------------------


def _secret(options, name, where):
    value = options.get(name)
    env = options.get(f"{name}_env")
    if value is None and env:
        value = os.environ.get(env)
        if value is None:
            logger.warning("%s: the environment variable %s (%s) is not set", where, env, name)
    return value


def _models(value, where):
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = [{"match": k, "rename": v} for k, v in value.items()]
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("match"), str):
            out.append((item["match"], item.get("rename") or None))
        else:
            raise ImproperlyConfigured(
                f"{where}['models']: each entry is a name, a pattern or "
                f"{{'match': ..., 'rename': ...}}, not {item!r}.")
    return tuple(out)


def build_upstream(name, options):
    where = f"OPENAI_DJANGO['UPSTREAMS'][{name!r}]"
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"{where} must be a dict of options.")
    unknown = set(options) - OPTIONS - {"name"}
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown options {sorted(unknown)}; "
                                   f"known: {sorted(OPTIONS)}.")
    base_url = options.get("base_url")
    if not isinstance(base_url, str) or "://" not in base_url:
        raise ImproperlyConfigured(f"{where}['base_url'] must be an http(s) URL.")
    kind = options.get("kind", "openai")
    if kind not in KINDS:
        raise ImproperlyConfigured(f"{where}['kind'] must be one of {KINDS}, not {kind!r}.")
    base_url = base_url.rstrip("/")
    style = options.get("azure_style")
    if kind == "azure":
        if base_url.endswith("/openai/v1"):
            base_url, style = base_url[:-len("/openai/v1")], style or "v1"
        elif base_url.endswith("/openai"):
            base_url = base_url[:-len("/openai")]
        style = style or ("v1" if options.get("api_version") in ("v1", "preview") else
                          "deployments")
        if style not in ("deployments", "v1"):
            raise ImproperlyConfigured(f"{where}['azure_style'] is 'deployments' or 'v1'.")
        if style == "deployments" and not options.get("api_version"):
            raise ImproperlyConfigured(f"{where}: an Azure upstream with deployment paths "
                                       f"needs an 'api_version' (e.g. '2024-10-21').")
    headers = options.get("headers") or {}
    if not isinstance(headers, dict):
        raise ImproperlyConfigured(f"{where}['headers'] must be a dict.")
    return Upstream(
        name=name, base_url=base_url, kind=kind,
        api_key=_secret(options, "api_key", where),
        admin_api_key=_secret(options, "admin_api_key", where),
        organization=options.get("organization"),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        connect_timeout=float(options.get("connect_timeout", app_settings.CONNECT_TIMEOUT)),
        read_timeout=float(options.get("read_timeout", app_settings.READ_TIMEOUT)),
        pool_size=int(options.get("pool_size", app_settings.POOL_SIZE)),
        proxy=options.get("proxy"), ca_bundle=options.get("ca_bundle"),
        client_cert=options.get("client_cert"), models=_models(options.get("models"), where),
        api_version=(None if options.get("api_version") == "v1"
                     else options.get("api_version")),
        azure_style=style or "deployments",
        http2=bool(options.get("http2", app_settings.HTTP2)))


def _build_config():
    configured = app_settings.UPSTREAMS
    if not configured:
        upstream = Upstream(
            name=DEFAULT, base_url=app_settings.BASE_URL.rstrip("/"),
            api_key=app_settings.API_KEY, admin_api_key=app_settings.ADMIN_API_KEY,
            organization=app_settings.ORGANIZATION,
            connect_timeout=app_settings.CONNECT_TIMEOUT,
            read_timeout=app_settings.READ_TIMEOUT, pool_size=app_settings.POOL_SIZE,
            proxy=app_settings.PROXY, ca_bundle=app_settings.CA_BUNDLE,
            client_cert=app_settings.CLIENT_CERT, http2=bool(app_settings.HTTP2))
        return Config({DEFAULT: upstream}, DEFAULT, single=True)
    if isinstance(configured, (list, tuple)):
        items = []
        for options in configured:
            if not isinstance(options, dict) or not options.get("name"):
                raise ImproperlyConfigured("OPENAI_DJANGO['UPSTREAMS'] as a list: each entry "
                                           "is a dict with a 'name'.")
            items.append((options["name"], options))
    elif isinstance(configured, dict):
        items = list(configured.items())
    else:
        raise ImproperlyConfigured("OPENAI_DJANGO['UPSTREAMS'] is a dict of name -> options.")
    upstreams = {}
    for name, options in items:
        if name in upstreams:
            raise ImproperlyConfigured(f"OPENAI_DJANGO['UPSTREAMS']: {name!r} twice.")
        upstreams[name] = build_upstream(str(name), options)
    default = app_settings.DEFAULT_UPSTREAM or next(iter(upstreams))
    if default not in upstreams:
        raise ImproperlyConfigured(f"OPENAI_DJANGO['DEFAULT_UPSTREAM'] = {default!r} is not "
                                   f"one of UPSTREAMS ({', '.join(upstreams)}).")
    fallbacks = []
    for pattern, names in (app_settings.FALLBACKS or {}).items():
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in upstreams]
        if missing:
            raise ImproperlyConfigured(f"OPENAI_DJANGO['FALLBACKS'][{pattern!r}] names "
                                       f"{missing}, not in UPSTREAMS.")
        fallbacks.append((pattern, tuple(names)))
    return Config(upstreams, default, tuple(fallbacks), single=False)


_config = None
_lock = threading.Lock()
_clients = {}  # name -> UpstreamClient
_async_clients = weakref.WeakKeyDictionary()  # loop -> {name: AsyncUpstreamClient}


def config():
    global _config
    current = _config
    if current is None:
        with _lock:
            if _config is None:
                _config = _build_config()
            current = _config
    return current


def reset():
    global _config
    with _lock:
        _config = None
        old = list(_clients.values())
        _clients.clear()
        loops = list(_async_clients.items())
        _async_clients.clear()
    for client in old:
        client.pool.clear()
    for loop, clients in loops:
        if not loop.is_closed():
            for client in clients.values():
                try:
                    loop.call_soon_threadsafe(client.pool.clear)
                except RuntimeError:
                    pass


def _settings_changed(*, setting, **kwargs):
    if setting == "OPENAI_DJANGO":
        reset()


setting_changed.connect(_settings_changed, dispatch_uid="openai_django.upstreams.reset")


def client(upstream):
    """The process's sync client to ``upstream`` (the one BASE_URL upstream: the one
    :func:`~openai_django.upstream.get_client` builds)."""
    if upstream.name == DEFAULT and config().single:
        from openai_django.upstream import get_client

        return get_client()
    found = _clients.get(upstream.name)
    if found is None:
        from openai_django.upstream import UpstreamClient

        with _lock:
            found = _clients.get(upstream.name)
            if found is None:
                found = _clients[upstream.name] = UpstreamClient(**upstream.client_options())
    return found


def aclient(upstream):
    """The running loop's async client to ``upstream``."""
    import asyncio

    from openai_django.transport import get_async_client

    if upstream.name == DEFAULT and config().single:
        return get_async_client()
    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        clients = _async_clients.setdefault(loop, {})
    found = clients.get(upstream.name)
    if found is None:
        from openai_django.transport.aio import AsyncUpstreamClient

        found = clients.setdefault(upstream.name,
                                   AsyncUpstreamClient(**upstream.client_options(),
                                                       http2=upstream.http2))
    return found


# -- routing -------------------------------------------------------------------------------


def route(invocation):
    """The hops a call goes along, first choice first."""
    cfg = config()
    if cfg.single:
        return cfg.routes.get("") or cfg.routes.setdefault("", (Hop(cfg.upstreams[DEFAULT]),))
    op = invocation.operation
    model = op.model_from(invocation.body, invocation.path_kwargs)
    if model:
        hops = cfg.routes.get(model)
        if hops is None:
            hops = cfg.routes[model] = _model_route(cfg, model)
            if len(cfg.routes) > 10_000:  # a client sending random names: no unbounded memo
                cfg.routes.clear()
        return hops
    holder = _holder(cfg, invocation)
    if holder is not None:
        return (Hop(cfg.upstreams[holder]),)
    default = cfg.upstreams[cfg.default]
    if op.method == "GET" and invocation.path_kwargs and len(cfg.upstreams) > 1:
        # An object no recorded call created (a batch's output file, an object made before
        # the gateway or around it): asked of the default, then of each other upstream while
        # they answer 404. The one that has it is recorded, so the next read goes there.
        return Search((Hop(default), *(Hop(u) for u in cfg.upstreams.values()
                                       if u is not default)))
    return (Hop(default),)


class Search(tuple):
    """A route whose hops are tried in turn on 404 too: looking for an object's holder."""


def _model_route(cfg, model):
    names = []
    for name, upstream in cfg.upstreams.items():
        if upstream.serves(model) is not None:
            names.append(name)
            break
    for pattern, fallbacks in cfg.fallbacks:
        if pattern == model or fnmatchcase(model, pattern):
            names = list(fallbacks) if not names or names[0] in fallbacks else \
                names + [n for n in fallbacks if n != names[0]]
            break
    if not names:
        names = [cfg.default]
    hops = []
    for name in dict.fromkeys(names):
        upstream = cfg.upstreams[name]
        hops.append(Hop(upstream, upstream.serves(model) or model))
    return tuple(hops)


def _holder(cfg, invocation):
    """The upstream that served the call creating the object this call is about (an id in
    its path), if it is still configured."""
    from openai_django.models import Call

    for value in invocation.path_kwargs.values():
        object_id = str(value)
        if not object_id:
            continue
        name = (Call.objects.filter(object_id=object_id[:200]).exclude(upstream="")
                .order_by("created").values_list("upstream", flat=True).first())
        if name in cfg.upstreams:
            return name
        return None
    return None


# -- one hop's request ---------------------------------------------------------------------


def _renamed(invocation, model):
    """The invocation with ``model`` in place of the client's (body or path)."""
    body = invocation.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        if body["model"] == model or invocation.raw:
            return invocation
        return replace(invocation, body={**body, "model": model}, raw_body=None)
    for name in ("model", "engine_id"):
        if invocation.path_kwargs.get(name) not in (None, model):
            return replace(invocation, path_kwargs={**invocation.path_kwargs, name: model})
    return invocation


def hop_request(invocation, hop, build):
    """``(args, kwargs)`` of the client's ``send`` for one hop (``build``: the gateway's
    request builder), in the upstream's dialect."""
    if hop.model:
        invocation = _renamed(invocation, hop.model)
    (method, path), kwargs = build(invocation)
    upstream = hop.upstream
    if upstream.kind == "azure":
        path, kwargs["query"] = azure_target(upstream, invocation, path, kwargs["query"],
                                             hop.model)
    return (method, path), kwargs


def azure_target(upstream, invocation, path, query, model):
    """Azure OpenAI's path and query for an OpenAI path: ``/openai/deployments/{model}/...``
    with ``api-version`` (deployment style), or ``/openai/v1/...``."""
    from urllib.parse import quote

    if upstream.azure_style == "v1":
        path = "/openai/v1" + path
    elif model and path in AZURE_DEPLOYMENT_PATHS:
        path = f"/openai/deployments/{quote(model, safe='')}{path}"
    else:
        path = "/openai" + path
    if upstream.api_version and "api-version=" not in query:
        version = f"api-version={quote(upstream.api_version, safe='')}"
        query = f"{query}&{version}" if query else version
    return path, query


def adapt_response(upstream, response):
    """An Azure answer in OpenAI's shape: its error bodies with ``message``, ``type``,
    ``param`` and ``code`` (``innererror`` kept), ``apim-request-id`` as ``x-request-id``."""
    if upstream.kind != "azure":
        return response
    headers = response.headers
    if "x-request-id" not in headers and "apim-request-id" in headers:
        headers["x-request-id"] = headers["apim-request-id"]
    if response.status < 400 or response.raw is not None or \
            "json" not in headers.get("content-type", "json"):
        return response
    try:
        body = orjson.loads(response.body) if response.body else {}
    except orjson.JSONDecodeError:
        return response
    response.body = orjson.dumps({"error": openai_error(body, response.status)})
    headers["content-type"] = "application/json"
    return response


def openai_error(body, status):
    """An error object of OpenAI's shape from Azure's (``{"error": {"code", "message"}}``,
    or API Management's ``{"statusCode", "message"}``)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": body.get("message") if isinstance(body, dict) else None,
                 "code": body.get("code") if isinstance(body, dict) else None}
    out = dict(error)
    out["message"] = str(error.get("message") or f"The upstream answered HTTP {status}.")
    out["type"] = error.get("type") or ERROR_TYPES.get(status, "server_error" if status >= 500
                                                      else "invalid_request_error")
    out["param"] = error.get("param")
    code = error.get("code")
    out["code"] = None if code is None else str(code)
    return out


# -- sending, with fallbacks ---------------------------------------------------------------


def _retryable_status(status):
    return status == 429 or status >= 500


def _may_fall_back(invocation, response, error, search=False):
    """Whether the next hop may be tried after this outcome."""
    if search and response is not None and response.status == 404:
        return True  # a GET looking for the holder of an object
    kind = invocation.kind
    safe = kind.repeatable(invocation.operation)
    if error is not None:
        if not isinstance(error, (UpstreamUnavailable, UpstreamTimeout)):
            return False
        return safe or getattr(error, "unsent", False)
    if response.status == 429:
        return True  # refused, not acted on: safe for any operation
    return response.status >= 500 and safe


def _entry(hop, started, response=None, error=None, skipped=None):
    entry = {"upstream": hop.upstream.name}
    if hop.model:
        entry["model"] = hop.model
    if skipped:
        entry["outcome"] = "skipped"
        entry["error"] = skipped
        return entry
    entry["ms"] = round((time.perf_counter() - started) * 1000, 3)
    if response is not None:
        entry["status"] = response.status
        entry["outcome"] = "ok" if response.status < 400 else "http_error"
    else:
        entry["outcome"] = "timeout" if isinstance(error, UpstreamTimeout) else (
            "unreachable" if isinstance(error, UpstreamUnavailable) else "error")
        entry["error"] = str(error)[:300]
    return entry


def _tag(target, upstream_name, attempts):
    target.upstream_name = upstream_name
    target.upstream_attempts = attempts if len(attempts) > 1 else None
    return target


def _close(response):
    raw = response.raw
    if raw is not None:
        raw.close()


def _candidates(hops, breaker, refresh=True):
    """The hops to try: those whose circuit is closed (all of them if none is)."""
    allowed, skipped = [], []
    for hop in hops:
        (allowed if breaker.allows(hop.upstream.name, refresh) else skipped).append(hop)
    if not allowed:
        return list(hops), []
    return allowed, skipped


class _Primed:
    """A stream whose first bytes were read before the client was answered (so that a
    stream broken before its first event can still go to the next upstream): they come
    first, then the rest as the handle reads it."""

    def __init__(self, raw, first):
        self._raw, self._first = raw, first

    def read1(self, size=65536):
        first, self._first = self._first, None
        return first if first is not None else self._raw.read1(size)

    def release_conn(self):
        self._raw.release_conn()

    def close(self):
        self._raw.close()

    def __aiter__(self):
        return self

    async def __anext__(self):
        first, self._first = self._first, None
        return first if first is not None else await self._raw.__anext__()

    async def aclose(self):
        await self._raw.aclose()

    @property
    def closed(self):
        return self._raw.closed


def _before_first_event(what):
    return UpstreamUnavailable(f"The upstream API {what} before the stream's first event.")


def _primed(response):
    import http.client

    raw = response.raw
    try:
        first = raw.read1(65536)
    except TimeoutError as exc:
        raw.close()
        raise UpstreamTimeout("The upstream API sent no event within the timeout.") from exc
    except (http.client.HTTPException, OSError) as exc:
        raw.close()
        raise _before_first_event(f"broke off ({exc or type(exc).__name__})") from exc
    if not first:
        raw.close()
        raise _before_first_event("ended the stream")
    response.raw = _Primed(raw, first)
    return response


async def _aprimed(response):
    raw = response.raw
    try:
        first = await raw.__anext__()
    except StopAsyncIteration:
        raise _before_first_event("ended the stream") from None
    except (UpstreamTimeout, UpstreamUnavailable):
        raise  # the handle dropped the connection
    except BaseException:
        await raw.aclose()
        raise
    response.raw = _Primed(raw, first)
    return response


def send(invocation, build):
    """Send a call along its route (sync); returns the :class:`UpstreamResponse` of the hop
    that answered, tagged with ``upstream_name``/``upstream_attempts``; or raises the last
    hop's error, tagged likewise."""
    if config().single:  # the one BASE_URL upstream: the path it always was
        args, kwargs = build(invocation)
        try:
            response = get_client().send(*args, **kwargs)
        except Exception as exc:
            _tag(exc, DEFAULT, ())
            raise
        return _tag(response, DEFAULT, ())
    from openai_django.breaker import breaker

    hops = route(invocation)
    search = isinstance(hops, Search)
    tries, skipped = _candidates(hops, breaker)
    attempts = [_entry(h, 0, skipped="circuit open") for h in skipped]
    for index, hop in enumerate(tries):
        last = index == len(tries) - 1
        upstream = hop.upstream
        started = time.perf_counter()
        response = error = None
        try:
            args, kwargs = hop_request(invocation, hop, build)
            response = adapt_response(upstream, client(upstream).send(*args, **kwargs))
            if response.raw is not None and not last and response.status < 400:
                response = _primed(response)
        except Exception as exc:
            response, error = None, exc
        if _go_on(invocation, hop, started, response, error, attempts, search, last):
            if response is not None:
                _close(response)
            logger.info("Upstream %s failed (%s); trying %s", upstream.name,
                        attempts[-1].get("status") or attempts[-1]["outcome"],
                        tries[index + 1].upstream.name)
            continue
        if error is not None:
            raise _tag(error, upstream.name, attempts)
        return _tag(response, upstream.name, attempts)
    raise AssertionError("unreachable")  # pragma: no cover


def _go_on(invocation, hop, started, response, error, attempts, search, last):
    """After one hop of :func:`send` or :func:`asend`: its attempt recorded, the breaker
    told, and whether the call goes on to the next hop."""
    from openai_django.breaker import breaker

    name = hop.upstream.name
    attempts.append(_entry(hop, started, response, error))
    failed = error is not None or _retryable_status(response.status)
    if isinstance(error, (UpstreamUnavailable, UpstreamTimeout)) or (
            response is not None and failed):
        breaker.failure(name, attempts[-1])
    elif response is not None and breaker.failing(name):
        breaker.success(name)
    failed = failed or (search and response.status == 404)
    return failed and not last and _may_fall_back(invocation, response, error, search)


async def asend(invocation, build):
    """:func:`send` with the async clients (the breaker's store is reached in the database
    pool's threads)."""
    if config().single:
        args, kwargs = build(invocation)
        try:
            response = await get_async_client().send(*args, **kwargs)
        except Exception as exc:
            _tag(exc, DEFAULT, ())
            raise
        return _tag(response, DEFAULT, ())
    from openai_django.breaker import breaker
    from openai_django.threads import db

    op = invocation.operation
    if op.model_from(invocation.body, invocation.path_kwargs) or not invocation.path_kwargs:
        hops = route(invocation)
    else:
        hops = await db(route)(invocation)  # looks up the holder of an object
    search = isinstance(hops, Search)
    names = [h.upstream.name for h in hops]
    if breaker.stale(names):
        await db(breaker.refresh)(names)
    tries, skipped = _candidates(hops, breaker, refresh=False)
    attempts = [_entry(h, 0, skipped="circuit open") for h in skipped]
    for index, hop in enumerate(tries):
        last = index == len(tries) - 1
        upstream = hop.upstream
        started = time.perf_counter()
        response = error = None
        try:
            args, kwargs = hop_request(invocation, hop, build)
            response = adapt_response(upstream,
                                      await aclient(upstream).send(*args, **kwargs))
            if response.raw is not None and not last and response.status < 400:
                response = await _aprimed(response)
        except Exception as exc:
            response, error = None, exc
        if _go_on(invocation, hop, started, response, error, attempts, search, last):
            if response is not None and response.raw is not None:
                await response.raw.aclose()
            continue
        if error is not None:
            raise _tag(error, upstream.name, attempts)
        return _tag(response, upstream.name, attempts)
    raise AssertionError("unreachable")  # pragma: no cover


def note(call, outcome):
    """Copy which upstream served the call, and its attempts, onto the record."""
    call.upstream = getattr(outcome, "upstream_name", "") or ""
    call.upstream_attempts = getattr(outcome, "upstream_attempts", None)


def describe():
    """Each configured upstream for the admin: name, kind, base URL, models, proxy, and its
    circuit's state."""
    from openai_django import proxies
    from openai_django.breaker import breaker

    cfg = config()
    rows = []
    for name, upstream in cfg.upstreams.items():
        try:
            proxy = proxies.proxy_url_for(upstream.base_url, upstream.proxy)
        except ImproperlyConfigured as exc:
            proxy = str(exc)
        rows.append({
            "name": name, "kind": upstream.kind, "base_url": upstream.base_url,
            "default": name == cfg.default,
            "models": ", ".join(p if not r else f"{p} → {r}" for p, r in upstream.models),
            "proxy": proxies.mask(proxy) if proxy else "direct",
            "ca_bundle": upstream.ca_bundle or "", "client_cert": bool(upstream.client_cert),
            "key": "set" if upstream.api_key else "none",
            **breaker.state(name),
        })
    return rows


def check():
    """System checks of the upstreams' settings (``manage.py check``): E101 settings that
    cannot be built (an unknown option, a bad URL, kind, proxy or fallback), E102 a CA bundle
    or client certificate file that is not there, W101 an upstream without a key, W102 a
    plain-HTTP upstream off loopback outside DEBUG."""
    from pathlib import Path

    from django.conf import settings
    from django.core import checks

    from openai_django import proxies

    try:
        cfg = _build_config()
        for upstream in cfg.upstreams.values():
            if upstream.proxy:
                proxies.parse_proxy(upstream.proxy)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="openai_django.E101",
                             hint="See the README, 'Many upstreams'.")]
    errors = []
    for upstream in cfg.upstreams.values():
        where = ("OPENAI_DJANGO" if cfg.single else
                 f"OPENAI_DJANGO['UPSTREAMS'][{upstream.name!r}]")
        cert = upstream.client_cert
        files = [upstream.ca_bundle] + (list(cert) if isinstance(cert, (list, tuple))
                                        else [cert])
        for path in files:
            if path and not Path(path).exists():
                errors.append(checks.Error(f"{where}: {path} does not exist.",
                                           id="openai_django.E102"))
        if cfg.single:
            continue  # the one BASE_URL upstream: checks W002 and W003
        if not upstream.api_key and upstream.kind != "compatible":
            errors.append(checks.Warning(
                f"{where} has no key: calls reach it without one.",
                hint="Set 'api_key_env' (the name of an environment variable) or 'api_key'.",
                id="openai_django.W101"))
        host = upstream.base_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if upstream.base_url.startswith("http://") and not settings.DEBUG and \
                host not in ("127.0.0.1", "localhost", "[::1]"):
            errors.append(checks.Warning(
                f"{where} uses plain HTTP outside DEBUG: prompts and its key cross the network "
                f"unencrypted.", id="openai_django.W102",
                hint="Use https://, or a loopback/private address you trust."))
    return errors


def model_names():
    """The exact model names the upstreams list (not patterns): choices for a replay
    against another model."""
    names = set()
    for upstream in config().upstreams.values():
        for pattern, _rename in upstream.models:
            if not any(c in pattern for c in "*?["):
                names.add(pattern)
    return names
