"""The operation registry: the bundled OpenAPI document, loaded once, as data.

Routes, validation, the upstream request and the admin's labels all come from here, so one view
class and one client method serve every operation of the spec.
"""

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SPEC_PATH = Path(__file__).parent / "spec" / "openapi.yaml"

# Values that today's SDKs send for fields the 2023 spec already knows, which a strict reading
# of the spec would refuse. Each entry widens the bundled schema in one place, so the spec stays
# the source of truth and the exceptions are listed here, where they can be reviewed.
OVERLAY = {
    # Tool, function and developer messages; content as a list of parts or null (tool calls).
    ("ChatCompletionRequestMessage", "role", "enum"): ["system", "user", "assistant", "tool",
                                                       "function", "developer"],
    ("ChatCompletionRequestMessage", "content", None): {
        "description": "The contents of the message: text, a list of content parts, or null.",
        "nullable": True,
        "oneOf": [{"type": "string"}, {"type": "array"}],
    },
    ("ChatCompletionRequestMessage", None, "required"): ["role"],
    # DALL-E 3 and gpt-image sizes.
    ("CreateImageRequest", "size", "enum"): ["256x256", "512x512", "1024x1024", "1792x1024",
                                             "1024x1792", "1536x1024", "1024x1536", "auto"],
}

# Request bodies whose fields with these names are sent as files in multipart requests.
_PATH_PARAM = re.compile(r"{([^}]+)}")


@dataclass(frozen=True)
class Operation:
    """One operation of the spec, with everything the gateway needs to serve it."""

    id: str
    method: str
    path: str  # as in the spec, e.g. "/files/{file_id}"
    summary: str = ""
    group: str = ""
    name: str = ""
    deprecated: bool = False
    content_type: str | None = None  # "application/json", "multipart/form-data" or None
    body_required: bool = False
    schema: dict | None = None  # the request body schema, refs resolved
    path_params: tuple = ()
    query_params: dict = field(default_factory=dict)  # name -> schema
    file_fields: tuple = ()
    streamable: bool = False  # may answer text/event-stream
    response_example: str | None = None
    request_example: str | None = None

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
        from urllib.parse import quote

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
    """All operations of the spec, by id and by (method, path)."""

    def __init__(self, document):
        self.document = document
        self.info = document.get("info", {})
        self.operations = {}
        components = document.get("components", {})
        for path, item in document["paths"].items():
            shared_params = item.get("parameters", [])
            for method, op in item.items():
                if method not in ("get", "post", "delete", "put", "patch"):
                    continue
                operation = _build_operation(path, method, op, shared_params, components)
                self.operations[operation.id] = operation

    def __getitem__(self, operation_id):
        return self.operations[operation_id]

    def __iter__(self):
        return iter(self.operations.values())

    def __len__(self):
        return len(self.operations)

    def by_path(self):
        """``{spec path: {METHOD: Operation}}``, in spec order."""
        result = {}
        for operation in self.operations.values():
            result.setdefault(operation.path, {})[operation.method] = operation
        return result

    def choices(self):
        return [(op.id, op.name or op.id) for op in self.operations.values()]


def _resolve(node, components, seen=()):
    """Inline ``$ref`` pointers (the spec has no recursive schemas)."""
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            kind, name = ref.split("/")[-2:]
            if ref in seen:
                return {}
            return _resolve(components[kind][name], components, seen + (ref,))
        return {key: _resolve(value, components, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, components, seen) for item in node]
    return node


def _apply_overlay(components):
    schemas = components["schemas"]
    for (schema_name, prop, key), value in OVERLAY.items():
        schema = schemas.get(schema_name)
        if schema is None:
            continue
        if prop is None:
            schema[key] = value
        elif key is None:
            schema["properties"][prop] = value
        else:
            schema["properties"][prop][key] = value


def _build_operation(path, method, op, shared_params, components):
    params = [_resolve(p, components) for p in shared_params + op.get("parameters", [])]
    path_params = tuple(p["name"] for p in params if p.get("in") == "path")
    query_params = {p["name"]: p.get("schema", {}) for p in params if p.get("in") == "query"}
    content_type = schema = None
    body_required = False
    request_body = op.get("requestBody")
    if request_body:
        body_required = bool(request_body.get("required"))
        content_type, media = next(iter(request_body["content"].items()))
        schema = _resolve(media.get("schema", {}), components)
    file_fields = ()
    streamable = False
    if schema:
        props = schema.get("properties", {})
        file_fields = tuple(
            name for name, prop in props.items() if prop.get("format") == "binary"
        )
        streamable = "stream" in props
    if "stream" in query_params:
        streamable = True
    meta = op.get("x-oaiMeta", {})
    return Operation(
        id=op["operationId"],
        method=method.upper(),
        path=path,
        summary=" ".join((op.get("summary") or "").split()),
        group=meta.get("group", ""),
        name=meta.get("name", op["operationId"]),
        deprecated=bool(op.get("deprecated")),
        content_type=content_type,
        body_required=body_required,
        schema=schema,
        path_params=path_params,
        query_params=query_params,
        file_fields=file_fields,
        streamable=streamable,
        response_example=meta.get("response"),
        request_example=meta.get("parameters"),
    )


def load_document(path=SPEC_PATH):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, "rb") as fh:
        return yaml.load(fh, Loader=loader)


@functools.lru_cache(maxsize=1)
def get_registry():
    """The registry of the bundled spec, built once per process."""
    document = load_document()
    document = copy.deepcopy(document)
    _apply_overlay(document["components"])
    return Registry(document)


def spec_bytes():
    return SPEC_PATH.read_bytes()
