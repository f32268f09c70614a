"""The operation registry: the two bundled OpenAPI documents, loaded once, as data.

Routes, validation, the upstream request and the admin's labels all come from here, so one view
class and one client method serve every operation of the spec.

Two documents are bundled: ``openapi.yaml`` (1.2.0, OpenAPI 3.0, March 2023: 28 operations) and
``openapi-2.3.0.yaml`` (OpenAPI 3.1, today's surface: 288 operations). Where both describe the
same (method, path) the 2.3.0 operation is the one served, because it is what today's SDKs
follow; the 11 operations only 1.2.0 has (engines, search, answers, classifications, edits, the
legacy ``/fine-tunes``) are served from 1.2.0. That makes 299 operations, 292 of them primaries:
the 7 ``beta_*`` ones of 2.3.0 live at paths with a query (``/responses?beta=true``) and are
variants of the plain path's operation (:meth:`Registry.select`).

2.3.0 has recursive schemas, so ``$ref`` pointers are no longer inlined: an operation's
``schema`` is the spec's own node (a top-level ``$ref`` followed) whose inner ``$ref`` point into
the document's ``components``; :mod:`openai_django.validation` compiles them with those
components available.

Cost: parsing the 3 MB YAML of 2.3.0 takes ~0.9 s even with libyaml's CSafeLoader, and the
test suite and the servers start many processes, so the parsed document is cached as JSON
(orjson) beside the sha256 of the YAML it came from (:func:`load_document`). Measured with
``python -m bench.validation_bench`` (the whole registry, both documents, 299 operations, in a
fresh process, imports excluded): cold (both YAML documents parsed) 1000-1200 ms, cached
60-90 ms.
"""

import datetime
import functools
import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote

import orjson
import yaml

logger = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).parent / "spec"
SPEC_FILES = {"1.2.0": SPEC_DIR / "openapi.yaml", "2.3.0": SPEC_DIR / "openapi-2.3.0.yaml"}
SPEC_PATH = SPEC_FILES["1.2.0"]
# Newest last: a later document's operation replaces an earlier one at the same (method, path).
SPEC_VERSIONS = ("1.2.0", "2.3.0")

_METHODS = ("get", "post", "delete", "put", "patch")
_PATH_PARAM = re.compile(r"{([^}]+)}")
# The JSON body of a curl example: ``-d '{...}'`` or ``--data '...'`` (shell single quotes).
_CURL_DATA = ("-d", "--data", "--data-raw", "--data-binary")


@dataclass(frozen=True)
class Operation:
    """One operation of the spec, with everything the gateway needs to serve it."""

    id: str
    method: str
    path: str  # as in the spec without its query, e.g. "/files/{file_id}"
    summary: str = ""
    group: str = ""
    name: str = ""
    deprecated: bool = False
    content_type: str | None = None  # the first request media type, e.g. "application/json"
    content_types: tuple = ()  # every request media type the operation accepts
    body_required: bool = False
    # The request body schema as in the spec, a top-level $ref followed; inner $refs point
    # into the document's components (2.3.0 is recursive, so nothing is inlined).
    schema: dict | None = None
    path_params: tuple = ()
    query_params: dict = field(default_factory=dict)  # name -> schema (top-level $ref followed)
    file_fields: tuple = ()  # multipart fields that carry files (or arrays of files)
    streamable: bool = False  # may answer text/event-stream
    response_example: str | None = None
    request_example: str | None = None  # one sample request body, as JSON text
    spec: str = "1.2.0"  # the document the operation comes from
    admin: bool = False  # takes an admin key (security names AdminApiKeyAuth)
    tags: tuple = ()
    response_types: tuple = ()  # media types of the 200/201 answers
    request_examples: list = field(default_factory=list, compare=False)  # parsed JSON bodies
    properties: dict = field(default_factory=dict, compare=False)  # top-level body properties
    query_match: dict = field(default_factory=dict)  # e.g. {"beta": "true"} for a variant

    @property
    def is_multipart(self):
        return self.content_type == "multipart/form-data"

    @property
    def is_json(self):
        return self.content_type == "application/json"

    @property
    def route(self):
        """The Django URL pattern, relative to the app's ``v1/`` prefix."""
        return _PATH_PARAM.sub(lambda m: f"<str:{m.group(1)}>", self.path.lstrip("/"))

    def upstream_path(self, path_kwargs):
        """The path to request upstream, with path parameters filled in (URL-quoted)."""
        if "{" not in self.path:
            return self.path
        return _PATH_PARAM.sub(
            lambda m: quote(str(path_kwargs[m.group(1)]), safe=":"), self.path
        )

    def model_from(self, body, path_kwargs):
        """The model a call is for, from its body or its path, for the record and filters."""
        if isinstance(body, dict):
            model = body.get("model")
            if isinstance(model, str):
                return model
        for name in ("model", "engine_id"):
            if name in path_kwargs:
                return str(path_kwargs[name])
        return ""


class Registry:
    """All operations of both specs, by id and by (method, path).

    ``operations`` holds every operation by id, query variants included; ``by_path()`` only the
    primaries, one Django route per path; ``select()`` picks a variant by the query string.
    """

    def __init__(self, documents):
        self.documents = documents
        self.document = documents["1.2.0"]  # the document /v1/openapi.yaml serves
        self.info = self.document.get("info", {})
        slots = {}  # (METHOD, path, query) -> Operation; newer documents replace older
        for version in SPEC_VERSIONS:
            if version in documents:
                for operation in _operations_of(documents[version], version):
                    key = (operation.method, operation.path,
                           tuple(sorted(operation.query_match.items())))
                    slots[key] = operation
        self.operations = {op.id: op for op in slots.values()}
        self._variants = {}
        for op in self.operations.values():
            if op.query_match:
                self._variants.setdefault((op.method, op.path), []).append(op)

    def __getitem__(self, operation_id):
        return self.operations[operation_id]

    def __iter__(self):
        return iter(self.operations.values())

    def __len__(self):
        return len(self.operations)

    def by_path(self):
        """``{spec path: {METHOD: Operation}}`` of the primaries (no query variants).

        Paths whose segments are literal come before those with a parameter at the same place
        (``/responses/compact`` before ``/responses/{response_id}``), so that Django, which
        takes the first pattern that matches, never routes a literal path to a parameter's
        view; otherwise spec order.
        """
        result = {}
        for operation in self.operations.values():
            if not operation.query_match:
                result.setdefault(operation.path, {})[operation.method] = operation
        order = sorted(result, key=lambda p: [s.startswith("{") for s in p.split("/")])
        return {path: result[path] for path in order}

    def select(self, operation, query_string):
        """The variant of ``operation`` whose ``query_match`` the query satisfies, else itself.

        ``POST /responses?beta=true`` is ``beta_createResponse``, with a schema of its own.
        """
        variants = self._variants.get((operation.method, operation.path))
        if not variants:
            return operation
        query = parse_qs(query_string or "", keep_blank_values=True)
        for variant in variants:
            if all(value in query.get(key, ()) for key, value in variant.query_match.items()):
                return variant
        return operation


def _operations_of(document, version):
    """Every operation of one document, in spec order."""
    components = document.get("components", {})
    for spec_path, item in document["paths"].items():
        shared_params = item.get("parameters", [])
        for method, op in item.items():
            if method in _METHODS:
                yield _build_operation(spec_path, method, op, shared_params, components,
                                       version)


def deref(node, components):
    """``node`` with its top-level ``$ref`` followed (repeatedly); inner ones are left."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node and node["$ref"] not in seen:
        seen.add(node["$ref"])
        target = lookup(node["$ref"], components)
        if target is None:
            return {}
        node = target
    return node


def lookup(ref, components):
    """The node a local ``#/components/...`` pointer names, or None."""
    parts = ref.split("/")
    if parts[:2] != ["#", "components"]:
        return None
    node = components
    for part in parts[2:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def top_properties(schema, components, _depth=0):
    """The properties of an object schema, through ``$ref`` and ``allOf`` (one level each),
    each with its top-level ``$ref`` followed: the field names and their schemas."""
    schema = deref(schema, components)
    if not isinstance(schema, dict) or _depth > 8:
        return {}
    props = {}
    for part in schema.get("allOf", ()):
        props.update(top_properties(part, components, _depth + 1))
    for name, prop in (schema.get("properties") or {}).items():
        props[name] = deref(prop, components)
    return props


def _is_file(schema, components, _depth=0):
    """Whether a property carries a file: a binary string, an array of them, or a
    ``$ref``/``anyOf``/``oneOf`` to one."""
    schema = deref(schema, components)
    if not isinstance(schema, dict) or _depth > 8:
        return False
    if schema.get("format") == "binary":
        return True
    if schema.get("type") == "array" and _is_file(schema.get("items", {}), components,
                                                  _depth + 1):
        return True
    return any(_is_file(option, components, _depth + 1)
               for key in ("anyOf", "oneOf") for option in schema.get(key, ()))


def _response_types(op, components):
    """The media types of the 200/201 answers, in spec order."""
    types = []
    for status in ("200", "201"):
        response = deref((op.get("responses") or {}).get(status), components)
        if isinstance(response, dict):
            types.extend(t for t in (response.get("content") or {}) if t not in types)
    return tuple(types)


def _example_entries(meta):
    """``x-oaiMeta`` examples as a list of ``{request, response}`` dicts (2.3.0 has both a
    list of titled examples and a single dict)."""
    examples = meta.get("examples")
    if isinstance(examples, dict):
        examples = [examples]
    return [e for e in examples or () if isinstance(e, dict)]


def curl_body(curl):
    """The JSON body of a curl command line (``-d '{...}'``), parsed, or None."""
    try:
        words = shlex.split(curl.replace("\\\n", " "))
    except ValueError:
        return None
    for index, word in enumerate(words[:-1]):
        if word in _CURL_DATA:
            try:
                return json.loads(words[index + 1])
            except ValueError:
                return None
    return None


def _request_examples(meta, version):
    """The example request bodies of an operation that parse as JSON objects."""
    bodies = []
    if version == "1.2.0":
        texts = [meta.get("parameters")]
        for text in texts:
            try:
                bodies.append(json.loads(text))
            except (TypeError, ValueError):
                pass
    else:
        for entry in _example_entries(meta):
            request = entry.get("request")
            curl = request.get("curl") if isinstance(request, dict) else request
            if isinstance(curl, str):
                bodies.append(curl_body(curl))
    return [body for body in bodies if isinstance(body, dict)]


def _response_example(meta):
    """The first example response text."""
    if "response" in meta:
        return meta.get("response")
    for entry in _example_entries(meta):
        if isinstance(entry.get("response"), str):
            return entry["response"]
    return None


def _build_operation(spec_path, method, op, shared_params, components, version):
    path, _, query = spec_path.partition("?")
    params = [deref(p, components) for p in shared_params + op.get("parameters", [])]
    path_params = tuple(p["name"] for p in params if p.get("in") == "path")
    query_params = {p["name"]: deref(p.get("schema", {}), components)
                    for p in params if p.get("in") == "query"}
    content_type = schema = None
    body_required = False
    request_body = deref(op.get("requestBody"), components)
    if request_body:
        body_required = bool(request_body.get("required"))
        content_type, media = next(iter(request_body["content"].items()))
        schema = deref(media.get("schema", {}), components)
    properties = top_properties(schema, components) if schema else {}
    file_fields = ()
    if content_type == "multipart/form-data":
        file_fields = tuple(name for name, prop in properties.items()
                            if _is_file(prop, components))
    response_types = _response_types(op, components)
    streamable = ("stream" in properties or "stream" in query_params
                  or "text/event-stream" in response_types)
    meta = op.get("x-oaiMeta") or {}
    request_examples = _request_examples(meta, version)
    request_example = meta.get("parameters") if version == "1.2.0" else None
    if request_example is None and request_examples:
        request_example = json.dumps(request_examples[0], indent=2)
    tags = tuple(op.get("tags") or ())
    return Operation(
        id=op["operationId"],
        method=method.upper(),
        path=path,
        summary=" ".join((op.get("summary") or "").split()),
        group=meta.get("group") or (tags[0].lower() if tags else ""),
        name=meta.get("name") or op["operationId"],
        deprecated=bool(op.get("deprecated")),
        content_type=content_type,
        content_types=tuple(request_body["content"]) if request_body else (),
        body_required=body_required,
        schema=schema,
        path_params=path_params,
        query_params=query_params,
        file_fields=file_fields,
        streamable=streamable,
        response_example=_response_example(meta),
        request_example=request_example,
        spec=version,
        admin=any("AdminApiKeyAuth" in s for s in op.get("security") or ()),
        tags=tags,
        response_types=response_types,
        request_examples=request_examples,
        properties=properties,
        query_match=dict(parse_qsl(query, keep_blank_values=True)),
    )


# -- loading -----------------------------------------------------------------------------------


def _json_safe(node):
    """The YAML document as plain JSON data: YAML reads ``2024-10-01`` as a date and the spec
    has integers beyond 64 bits (``seed`` bounds), which neither orjson nor the Rust validator
    take; keys are made strings (unquoted status codes)."""
    if isinstance(node, dict):
        return {str(key): _json_safe(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_json_safe(value) for value in node]
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 2**63:
        return float(node)
    if isinstance(node, (datetime.date, datetime.datetime)):
        return node.isoformat()
    return node


def cache_dir():
    """Where parsed documents are cached: ``$OPENAI_DJANGO_SPEC_CACHE``, else
    ``$XDG_CACHE_HOME/openai_django``, else ``~/.cache/openai_django``."""
    override = os.environ.get("OPENAI_DJANGO_SPEC_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "openai_django"


def _parse_yaml(raw):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return _json_safe(yaml.load(raw, Loader=loader))


def load_document(path=SPEC_PATH, use_cache=True):
    """The parsed document at ``path``, from the cache when it holds this very YAML.

    The cache file is named by the sha256 of the YAML, so an edited or upgraded spec is never
    read stale; a cache that cannot be read or written (read-only home, full disk) only costs
    the parse: every failure falls back silently to parsing.
    """
    raw = Path(path).read_bytes()
    if not use_cache:
        return _parse_yaml(raw)
    digest = hashlib.sha256(raw).hexdigest()
    cached = cache_dir() / f"{Path(path).stem}-{digest[:32]}.json"
    try:
        return orjson.loads(cached.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        pass
    document = _parse_yaml(raw)
    _write_cache(cached, orjson.dumps(document))
    return document


def _write_cache(target, data):
    """Write ``data`` to ``target`` atomically (a concurrent reader never sees half a file)."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        logger.debug("spec cache not written to %s: %s", target, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_documents(use_cache=True):
    """Both bundled documents, by version."""
    return {version: load_document(SPEC_FILES[version], use_cache=use_cache)
            for version in SPEC_VERSIONS}


@functools.lru_cache(maxsize=1)
def get_registry():
    """The registry of the bundled specs, built once per process."""
    return Registry(load_documents())


def spec_bytes(version="1.2.0"):
    """The bundled document of ``version``, as its YAML bytes (``/v1/openapi.yaml``)."""
    return SPEC_FILES[version].read_bytes()
