"""The operations of both bundled OpenAPI documents, as the stand-in's route table needs them.

The stand-in routes every (method, path) of ``openai_django/spec/openapi.yaml`` (v1.2.0) and
``openapi-2.3.0.yaml`` (newest last, as :mod:`openai_django.spec` orders them) from this
table, not from a hand-written copy.  For each operation it keeps what a generic answer needs:
the ``x-oaiMeta`` example response (parsed), a minimal body built from the 200 response
schema, the response content types and the example's path parameter values (so an answer can
echo the caller's ids where the example had its own).

Deriving the table from the documents takes a second or so, which would multiply the
stand-in's start-up time (tests start dozens of servers), so the derived table is cached as
JSON in the spec cache directory (``$OPENAI_DJANGO_SPEC_CACHE``, else
``~/.cache/openai_django``), keyed by the SHA-256 of both documents, of
``openai_django/spec.py`` and of this module (a few milliseconds to load).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("get", "post", "delete", "put", "patch")
#: Response content types answered with bytes rather than JSON.
BINARY_TYPES = ("video/mp4", "image/webp", "application/zip", "application/octet-stream",
                "audio/mpeg", "image/png")
#: Nesting depth of a body built from a schema (the 3.1 schemas are recursive in places).
MAX_SCHEMA_DEPTH = 6

_PARAM_RE = re.compile(r"{(\w+)}")
_URL_RE = re.compile(r"https://api\.openai\.com/v1(/[^\s\"'\\?]*)")
_TRAILING_COMMA_RE = re.compile(r",(\s*[}\]])")


@dataclass(frozen=True)
class SpecOperation:
    """One operation of one spec (plain data, so the table can be cached as JSON)."""

    id: str
    method: str
    path: str  # as routed: without a ``?beta=true`` query match
    spec: str
    admin: bool
    response_types: tuple[str, ...]
    example: Any  # the parsed example response, or None
    minimal: Any  # a body built from the 200 response schema, or None
    example_params: dict  # path parameter -> the value the example request used
    query_match: str | None = None
    status: int = 200

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PARAM_RE.findall(self.path))

    @property
    def binary_type(self) -> str | None:
        """The content type of a binary answer, when the operation answers bytes."""
        for ctype in self.response_types:
            if ctype in BINARY_TYPES:
                return ctype
        return None


# -- reading the documents -----------------------------------------------------------------------


def spec_operations() -> list[SpecOperation]:
    """Every operation of both specs, oldest spec first.

    The documents come from :func:`openai_django.spec.load_documents` (the project's one YAML
    reader, with its parse cache; it imports no Django); the registry's ``Operation`` does not
    keep the response schemas a minimal body is built from, so the operations are read here.
    """
    from openai_django.spec import load_documents

    out: list[SpecOperation] = []
    for version, document in load_documents().items():
        components = document.get("components") or {}
        for raw_path, item in (document.get("paths") or {}).items():
            for method, op in item.items():
                if method in METHODS and isinstance(op, dict):
                    out.append(_operation(version, raw_path, method, op, components))
    return out


def _operation(version: str, raw_path: str, method: str, op: dict,
               components: dict) -> SpecOperation:
    path, _, query_match = raw_path.partition("?")
    status, types, schema = _success(op)
    example, request = _example(op.get("x-oaiMeta") or {})
    minimal = None
    if schema is not None:
        try:
            minimal = build_from_schema(schema, components)
        except RecursionError:  # pragma: no cover - guarded by MAX_SCHEMA_DEPTH
            minimal = None
    return SpecOperation(
        id=str(op.get("operationId") or f"{method}{path}"), method=method.upper(), path=path,
        spec=version, admin=any("AdminApiKeyAuth" in s for s in op.get("security") or ()),
        response_types=types, example=example, minimal=minimal,
        example_params=_example_params(path, request), query_match=query_match or None,
        status=status)


def _success(op: dict) -> tuple[int, tuple[str, ...], dict | None]:
    """(status, content types, JSON schema) of the first 2xx response."""
    for code, resp in (op.get("responses") or {}).items():
        if str(code).startswith("2") and isinstance(resp, dict):
            content = resp.get("content") or {}
            schema = (content.get("application/json") or {}).get("schema")
            return int(code), tuple(content), schema
    return 200, (), None


def parse_example(text: Any) -> Any:
    """An example response as data: JSON, forgiving the trailing commas some examples have."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text.startswith(("{", "[")):
        return None
    for candidate in (text, _TRAILING_COMMA_RE.sub(r"\1", text)):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _example(meta: dict) -> tuple[Any, str]:
    """(the first parseable example response, its request text) of an ``x-oaiMeta``."""
    examples = meta.get("examples")
    candidates: list[tuple[Any, Any]] = []
    if isinstance(examples, list):
        candidates = [(e.get("response"), e.get("request")) for e in examples
                      if isinstance(e, dict)]
    elif isinstance(examples, dict):
        if "response" in examples or "request" in examples:
            candidates = [(examples.get("response"), examples.get("request"))]
        else:  # spec 1.2.0: ``examples`` holds the requests, the response sits beside it
            candidates = [(meta.get("response"), examples)]
    if "response" in meta and not candidates:
        candidates = [(meta.get("response"), None)]
    for response, request in candidates:
        parsed = parse_example(response)
        if parsed is not None:
            return parsed, _request_text(request)
    return None, _request_text(candidates[0][1]) if candidates else ""


def _request_text(request: Any) -> str:
    if isinstance(request, dict):
        return str(request.get("curl") or next(iter(request.values()), ""))
    return request if isinstance(request, str) else ""


def _example_params(path: str, request: str) -> dict:
    """The path parameter values in the example's curl URL (``{"batch_id": "batch_abc123"}``)."""
    names = _PARAM_RE.findall(path)
    if not names or not request:
        return {}
    pattern = re.compile("^" + _PARAM_RE.sub(r"(?P<\1>[^/]+)", re.escape(path)
                                             .replace(r"\{", "{").replace(r"\}", "}")) + "$")
    for match in _URL_RE.finditer(request):
        found = pattern.match(match.group(1).rstrip("/"))
        if found:
            return {k: v for k, v in found.groupdict().items() if "$" not in v}
    return {}


# -- minimal bodies from schemas -----------------------------------------------------------------


def _deref(node: Any, components: dict, seen: tuple) -> tuple[Any, tuple]:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            return {}, seen
        seen = seen + (ref,)
        kind, name = ref.split("/")[-2:]
        node = (components.get(kind) or {}).get(name, {})
    return node, seen


def build_from_schema(schema: Any, components: dict, name: str = "", depth: int = 0,
                      seen: tuple = ()) -> Any:
    """A small instance of ``schema``: required properties only, plausible values, consts."""
    schema, seen = _deref(schema, components, seen)
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    if "allOf" in schema:
        merged: dict = {}
        for part in schema["allOf"]:
            value = build_from_schema(part, components, name, depth + 1, seen)
            if isinstance(value, dict):
                merged.update(value)
            elif value is not None and not merged:
                return value
        return merged
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key]
                       if _deref(o, components, seen)[0].get("type") != "null"]
            return (build_from_schema(options[0], components, name, depth + 1, seen)
                    if options else None)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        props = schema.get("properties") or {}
        out = {}
        for prop in schema.get("required") or ():
            out[prop] = build_from_schema(props.get(prop, {}), components, prop, depth + 1,
                                          seen)
        return out
    if kind == "array":
        return []
    if kind == "integer":
        return 1700000000 if name.endswith("_at") or name == "created" else 0
    if kind == "number":
        return 0.0
    if kind == "boolean":
        return name == "deleted"
    if kind == "string":
        return _plausible_string(name, schema)
    return None


def _plausible_string(name: str, schema: dict) -> str:
    if name == "id" or name.endswith("_id"):
        return "standin_" + (name[:-3] if name.endswith("_id") else "obj") + "_abc123"
    if schema.get("format") in ("date-time", "date"):
        return "2026-01-01T00:00:00Z"
    if "url" in name:
        return "https://example.test/standin"
    if name in ("name", "title", "filename"):
        return f"standin-{name}"
    return name or "standin"


# -- the cached table ----------------------------------------------------------------------------


def _cache_dir() -> Path:
    """The project's spec cache directory (:func:`openai_django.spec.cache_dir`)."""
    from openai_django.spec import cache_dir

    return Path(cache_dir())


def _fingerprint() -> str:
    from openai_django import spec

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(spec.__file__).read_bytes())
    for version in spec.SPEC_VERSIONS:
        h.update(spec.SPEC_FILES[version].read_bytes())
    return h.hexdigest()[:24]


def load_operations() -> list[SpecOperation]:
    """:func:`spec_operations`, read from the JSON cache when the documents did not change."""
    key = _fingerprint()
    for directory in (_cache_dir(), Path(tempfile.gettempdir()) / "openai-django"):
        path = directory / f"standin-routes-{key}.json"
        try:
            raw = json.loads(path.read_bytes())
            return [SpecOperation(**{**r, "response_types": tuple(r["response_types"])})
                    for r in raw]
        except (OSError, ValueError, TypeError, KeyError):
            continue
    ops = spec_operations()
    data = json.dumps([op.__dict__ for op in ops]).encode()
    for directory in (_cache_dir(), Path(tempfile.gettempdir()) / "openai-django"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".standin-routes-{key}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, directory / f"standin-routes-{key}.json")
            break
        except OSError:
            continue
    return ops
