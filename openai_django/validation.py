"""Request validation against the spec's schemas, with ``jsonschema_rs`` (JSON Schema 2020-12).

Each bundled document becomes one schema resource (``urn:openai-django:spec:<version>``) that
holds its ``components``, every operation's request body schema and its query parameters;
one validator per operation is compiled from a ``$ref`` into it, lazily, and cached. The
documents are adapted once, when the resource is built (:func:`to_2020_12`):

* OpenAPI 3.0 spellings (all of 1.2.0, and some of 2.3.0) become 2020-12: ``nullable: true``
  allows null, a boolean ``exclusiveMinimum``/``exclusiveMaximum`` becomes the number;
  ``example``/``x-*`` are dropped, ``discriminator`` is kept only as a note for our messages.
* ``additionalProperties: false`` is dropped: **fields the spec does not know pass through**,
  because newer SDKs send fields the bundled schema lacks and the upstream is their judge.
* ``oneOf`` is compiled as ``anyOf``: the spec writes ``oneOf`` for alternatives that overlap
  (a text part fits two branches), and a value that fits two is not the client's mistake.

Errors read like OpenAI's (``Missing required parameter: 'messages'.``, ``Invalid type for
'temperature': expected a number, but got a string instead.``), with ``param`` the dotted path of
the offending field (``messages[1].role``). When every branch of an ``anyOf`` fails, the message
is the one of the branch the value meant: the one its discriminator (``role``, ``type``) names,
else the one whose type fits (:func:`_refine`).

Cost, measured with ``python -m bench.validation_bench`` (the hand-made 3.0 validator this
replaced against this one, µs per call, on a shared and noisy machine): a valid chat body
13 µs before, 2.5-3.5 µs now; an invalid one (a message with an unknown role) 17 µs before,
55 µs now (every branch's errors collected, the branch chosen, the message written); a
Responses body with a tool 0.5 µs before (it ignored ``allOf``, so it checked nothing of
2.3.0's schema), 2.5 µs now. The first validation of a process builds the schema resource
(1422 components converted and registered, 35-55 ms); each operation's validator then
compiles in ~1.5 ms, once.
"""

import functools
import json
import math
import re
from typing import NamedTuple

import jsonschema_rs

from openai_django.errors import InvalidRequest

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_URN = "urn:openai-django:spec:"

# Keywords whose value is a map of name -> schema, a schema, or a list of schemas: the only
# places a converter may recurse (elsewhere a key named "example" is a property, not a note).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if",
               "then", "else", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_NOTES = ("example", "examples")
# Fields the spec marks required that the API, and the spec's own examples, leave out. Each
# entry relaxes one schema in one place, so the spec stays the source of truth and the
# exceptions are listed here, where they can be reviewed (tests/test_validation_examples.py).
OPTIONAL = {
    # Image input in the Responses API: ``detail`` defaults to "auto" (createResponse example).
    ("2.3.0", "InputImageContent"): ("detail",),
    ("2.3.0", "BetaInputImageContent"): ("detail",),
    # Function tools in the Responses API: ``strict`` may be omitted (createResponse example).
    ("2.3.0", "FunctionTool"): ("strict",),
    ("2.3.0", "BetaFunctionTool"): ("strict",),
    # The session's ephemeral key is what the API answers, not what the client sends.
    ("2.3.0", "RealtimeSessionCreateRequest"): ("client_secret",),
}
_ARTICLES = {"integer": "an integer", "array": "an array", "object": "an object",
             "null": "null"}


# -- the spec as 2020-12 --------------------------------------------------------------------


def to_2020_12(schema):
    """``schema`` (OpenAPI 3.0 or 3.1) as a JSON Schema 2020-12 one, under this module's
    policy (see the module docstring)."""
    if isinstance(schema, list):
        return [to_2020_12(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _NOTES or key.startswith("x-") or key == "nullable":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: to_2020_12(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE:
            if value is False and key in ("additionalProperties", "unevaluatedProperties"):
                continue
            out[key] = to_2020_12(value)
        elif key in _SCHEMA_LISTS:
            out["anyOf" if key == "oneOf" else key] = [to_2020_12(item) for item in value]
        else:
            out[key] = value
    _exclusive_bounds(out)
    if schema.get("nullable") is True:
        return _nullable(out)
    return out


def _exclusive_bounds(schema):
    """OpenAPI 3.0's ``exclusiveMinimum: true`` beside ``minimum`` is 2020-12's number."""
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(flag), bool):
            if schema.pop(flag) and bound in schema:
                schema[flag] = schema.pop(bound)


def _nullable(schema):
    """``schema`` that also admits null (OpenAPI 3.0's ``nullable: true``)."""
    kind = schema.get("type")
    if isinstance(kind, str) and "enum" not in schema:
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list) and "enum" not in schema:
        return {**schema, "type": [*kind, "null"] if "null" not in kind else kind}
    return {"anyOf": [schema, {"type": "null"}]}


@functools.cache
def _resource(version):
    """``(document, jsonschema_rs.Registry)`` of one spec: its components and, per operation,
    the body schema (``#/operations/<id>``) and the query parameters (``#/queries/<id>``)."""
    from openai_django.spec import get_registry

    registry = get_registry()
    source = registry.documents[version].get("components", {})
    # A body schema that is a component is referenced, not copied, so OPTIONAL applies to it.
    names = {id(schema): name for name, schema in source.get("schemas", {}).items()}
    operations, queries = {}, {}
    for op in registry:
        if op.spec != version:
            continue
        if id(op.schema) in names:
            operations[op.id] = {"$ref": "#/components/schemas/" + names[id(op.schema)]}
        elif op.schema is not None:
            operations[op.id] = to_2020_12(op.schema)
        if op.query_params:
            queries[op.id] = {"type": "object", "properties": to_2020_12_map(op.query_params)}
    schemas = to_2020_12_map(source.get("schemas", {}))
    _relax(schemas, version)
    document = {
        "$schema": DIALECT,
        "components": {"schemas": schemas},
        "operations": operations,
        "queries": queries,
    }
    return document, jsonschema_rs.Registry([(_URN + version, document)])


def _relax(schemas, version):
    """Drop the :data:`OPTIONAL` fields from their schemas' ``required`` lists."""
    for (spec, name), fields in OPTIONAL.items():
        schema = schemas.get(name) if spec == version else None
        if schema and "required" in schema:
            schema["required"] = [f for f in schema["required"] if f not in fields]


def to_2020_12_map(schemas):
    """A map of name -> schema, each converted."""
    return {name: to_2020_12(schema) for name, schema in schemas.items()}


def _pointer_token(name):
    return name.replace("~", "~0").replace("/", "~1")


@functools.cache
def _validator(version, section, op_id):
    """The compiled validator of one operation's body (``section="operations"``) or query
    (``"queries"``), cached for the process."""
    _, registry = _resource(version)
    root = {"$schema": DIALECT, "$ref": f"{_URN}{version}#/{section}/{_pointer_token(op_id)}"}
    return jsonschema_rs.Draft202012Validator(root, registry=registry)


# -- messages ---------------------------------------------------------------------------------


def _join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _param(instance_path):
    """``["messages", 1, "role"]`` as ``"messages[1].role"``."""
    param = ""
    for key in instance_path:
        param = _join(param, key)
    return param


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _type_phrase(kinds):
    """``["number", "null"]`` as ``"a number or null"``."""
    words = [_ARTICLES.get(kind, f"a {kind}") for kind in kinds]
    return " or ".join(dict.fromkeys(words)) or "another type"


def _listing(values):
    return ", ".join(repr(value) if isinstance(value, str) else json.dumps(value)
                     for value in values)


def _message(error):
    """``(message, param)`` of one jsonschema_rs error, in OpenAI's words."""
    kind, details = error.kind.name, error.kind.as_dict()
    param = _param(error.instance_path)
    value = error.instance
    if kind == "required":
        missing = _join(param, details["property"])
        return f"Missing required parameter: '{missing}'.", missing
    if kind == "type":
        kinds = [k for k in details["types"] if k != "null"] or details["types"]
        return (f"Invalid type for '{param}': expected {_type_phrase(kinds)}, but got "
                f"{_describe(value)} instead.", param)
    if kind in ("enum", "const"):
        options = details.get("options", [details.get("expected_value")])
        return (f"Invalid value for '{param}': {_listing([value])}. Supported values are: "
                f"{_listing(options)}.", param)
    if kind in ("maximum", "exclusiveMaximum"):
        return f"{value} is greater than the maximum of {details['limit']} - '{param}'", param
    if kind in ("minimum", "exclusiveMinimum"):
        return f"{value} is less than the minimum of {details['limit']} - '{param}'", param
    if kind in ("minItems", "maxItems", "minLength", "maxLength"):
        return _length_message(kind, details["limit"], value, param), param
    return f"Invalid value for '{param}': {error.message}.", param


def _length_message(kind, limit, value, param):
    noun = "array" if isinstance(value, list) else "string"
    bound = "minimum" if kind.startswith("min") else "maximum"
    if noun == "array" and not value:
        got = "an empty array"
    else:
        got = f"{'an array' if noun == 'array' else 'a string'} with length {len(value)}"
    state = ("empty array" if got == "an empty array" else
             f"{noun} too {'short' if bound == 'minimum' else 'long'}")
    return (f"Invalid '{param}': {state}. Expected {'an' if noun == 'array' else 'a'} {noun} "
            f"with {bound} length {limit}, but got {got} instead.")


# -- choosing the error that says most -------------------------------------------------------


class _Doc(NamedTuple):
    """The converted document of one spec, and the root a validator was compiled from."""

    document: dict
    version: str
    root: dict


def _walk(doc, tokens):
    """The schema node at an error's ``evaluation_path``, following each ``$ref`` in it."""
    node = doc.root
    for token in tokens:
        if token == "$ref":
            node = _lookup(doc, node["$ref"])
        else:
            node = node[token]
    return node


def _lookup(doc, ref):
    pointer = ref[len(_URN + doc.version):] if ref.startswith(_URN) else ref
    node = doc.document
    for part in pointer.lstrip("#").strip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(doc, node):
    for _ in range(16):
        if not (isinstance(node, dict) and "$ref" in node):
            break
        node = _lookup(doc, node["$ref"])
    return node


def _tag_values(doc, branch, name, depth=0):
    """The values a branch allows for property ``name`` (its ``const``/``enum``, through
    ``$ref``, ``allOf`` and nested ``anyOf``), or None when it does not constrain it."""
    branch = _deref(doc, branch)
    if not isinstance(branch, dict) or depth > 6:
        return None
    prop = _deref(doc, (branch.get("properties") or {}).get(name))
    if isinstance(prop, dict):
        if "const" in prop:
            return [prop["const"]]
        if "enum" in prop:
            return [v for v in prop["enum"] if v is not None]
    for key in ("allOf", "anyOf"):
        found = [_tag_values(doc, sub, name, depth + 1)
                 for sub in branch.get(key, ())]
        found = [v for v in found if v is not None]
        if found:
            return [v for values in found for v in values]
    return None


def _types(doc, branch, depth=0):
    """The JSON types a branch admits, or None for any."""
    branch = _deref(doc, branch)
    if not isinstance(branch, dict) or depth > 6:
        return None
    kind = branch.get("type")
    if kind is not None:
        return {kind} if isinstance(kind, str) else set(kind)
    for key in ("const", "enum"):
        if key in branch:
            values = [branch["const"]] if key == "const" else branch["enum"]
            return {_json_type(v) for v in values}
    options = branch.get("anyOf") or branch.get("allOf")
    if options:
        found = [_types(doc, sub, depth + 1) for sub in options]
        if any(f is None for f in found):
            return None
        return set().union(*found)
    return None


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(types, value):
    if types is None:
        return True
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _discriminator(doc, parent, branches, value):
    """The property that tells the branches apart: the spec's ``discriminator``, else the
    first of ``type``/``role``/``object`` that every object branch pins to values."""
    declared = (parent.get("discriminator") or {}).get("propertyName")
    if declared:
        return declared
    objects = [b for b in branches if _types(doc, b) == {"object"}]
    if len(objects) < 2:
        return None
    for name in ("type", "role", "object"):
        if name in value and all(_tag_values(doc, b, name) for b in objects):
            return name
    return None


class _Reported(Exception):
    """A finished ``(message, param)`` found while choosing a branch."""

    def __init__(self, message, param):
        super().__init__(message)
        self.message, self.param = message, param


def _choose_branch(doc, error):
    """The index of the ``anyOf`` branch the value meant; raise :class:`_Reported` when the
    value fits none by its discriminator or its type."""
    tokens = list(error.evaluation_path)
    branches = _walk(doc, tokens)
    parent = _walk(doc, tokens[:-1])
    value = error.instance
    param = _param(error.instance_path)
    candidates = list(range(len(branches)))
    if isinstance(value, dict):
        name = _discriminator(doc, parent, branches, value)
        if name and name in value:
            allowed = [_tag_values(doc, b, name) for b in branches]
            candidates = [i for i in candidates if allowed[i] and value[name] in allowed[i]]
            if not candidates:
                options = [v for values in allowed if values for v in values]
                raise _Reported(
                    f"Invalid value for '{_join(param, name)}': {_listing([value[name]])}. "
                    f"Supported values are: {_listing(dict.fromkeys(options))}.",
                    _join(param, name))
    fitting = [i for i in candidates if _fits(_types(doc, branches[i]), value)]
    if not fitting:
        kinds = set().union(*(_types(doc, b) or set() for b in branches))
        kinds.discard("null")
        order = ("string", "number", "integer", "boolean", "array", "object")
        raise _Reported(
            f"Invalid type for '{param}': expected {_type_phrase(k for k in order if k in kinds)}"
            f", but got {_describe(value)} instead.", param)
    contexts = error.kind.context
    return max(fitting, key=lambda i: max(len(e.instance_path) for e in contexts[i]))


def _refine(doc, error, order):
    """``(message, param)`` of the most specific error under ``error``, through nested
    ``anyOf`` failures."""
    for _ in range(64):
        if error.kind.name not in ("anyOf", "oneOf"):
            break
        try:
            index = _choose_branch(doc, error)
        except _Reported as reported:
            return reported.message, reported.param
        except (KeyError, IndexError, TypeError, ValueError):
            # A path this walker cannot follow: the validator's own words still name the
            # field, and the client gets a 400, never a 500.
            break
        error = _first(error.kind.context[index], order)
    return _message(error)


def _first(errors, order):
    """The error to report first: a missing required field, then the fields in the order the
    client sent them (``order``: top-level key -> position)."""
    def key(error):
        path = list(error.instance_path)
        if error.kind.name == "required" and not path:
            return (0, 0, 0)
        return (1, order.get(path[0], len(order)) if path else -1, len(path))
    return min(errors, key=key)


def _check(version, section, op_id, instance):
    """Raise :class:`InvalidRequest` for the first error of ``instance``, if any."""
    validator = _validator(version, section, op_id)
    try:
        # is_valid first: a valid body (nearly every call) makes no error iterator, no list.
        if validator.is_valid(instance):
            return
        errors = list(validator.iter_errors(instance))
    except (ValueError, TypeError, OverflowError) as exc:  # a value JSON cannot carry
        raise InvalidRequest(f"The request holds a value that is not valid JSON: {exc}",
                             param=None) from None
    if not errors:
        return
    root = {"$ref": f"{_URN}{version}#/{section}/{_pointer_token(op_id)}"}
    doc = _Doc(_resource(version)[0], version, root)
    order = {key: index for index, key in enumerate(instance)} if isinstance(
        instance, dict) else {}
    message, param = _refine(doc, _first(errors, order), order)
    raise InvalidRequest(message, param=param or None)


# -- the three entry points -------------------------------------------------------------------


def validate_json(operation, body):
    """Validate a parsed JSON body; raise :class:`InvalidRequest` with ``param`` set."""
    if operation.schema is None:
        return
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    _check(operation.spec, "operations", operation.id, body)


def _field_name(name):
    """``image[]`` (how SDKs send arrays in forms) is the field ``image``."""
    return name[:-2] if name.endswith("[]") else name


def validate_form(operation, fields, files):
    """Validate multipart ``fields`` ({name: str or [str]}) and ``files`` ({name: upload}).

    Fields arrive as strings and are read as their property's type first; a file field sent
    as text, or a file sent for a text field, is an error naming the field.
    """
    properties, components = operation.properties, _components(operation)
    instance = {}
    for raw_name, value in fields.items():
        name = _field_name(raw_name)
        if name in operation.file_fields:
            raise InvalidRequest(
                f"'{name}' must be sent as a file in a multipart/form-data body.", param=name
            )
        as_list = raw_name.endswith("[]") and not isinstance(value, list)
        instance[name] = coerce(value if not as_list else [value], properties.get(name),
                                components)
    for raw_name in files:
        name = _field_name(raw_name)
        if name in properties and name not in operation.file_fields:
            raise InvalidRequest(f"'{name}' must be a form field, not a file.", param=name)
        # A stand-in that fits a binary string; the bytes themselves are the upstream's.
        instance[name] = [""] if raw_name.endswith("[]") else ""
    if operation.schema is not None:
        _check(operation.spec, "operations", operation.id, instance)


def validate_query(operation, query):
    """Validate query parameters ({name: str or [str]}), each read as its schema's type."""
    if not operation.query_params:
        return
    components = _components(operation)
    instance = {}
    for raw_name, value in query.items():
        name = _field_name(raw_name)
        as_list = raw_name.endswith("[]") and not isinstance(value, list)
        instance[name] = coerce(value if not as_list else [value],
                                operation.query_params.get(name), components)
    _check(operation.spec, "queries", operation.id, instance)


# -- strings read as their schema's type ----------------------------------------------------

_INTEGER = re.compile(r"[+-]?\d+")


def _components(operation):
    from openai_django.spec import get_registry

    return get_registry().documents[operation.spec].get("components", {})


def _options(schema, components):
    """``schema`` and its ``anyOf``/``oneOf``/``allOf`` branches, each ``$ref`` followed."""
    from openai_django.spec import deref

    schema = deref(schema, components)
    if not isinstance(schema, dict):
        return []
    options = [schema]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, ()):
            options.extend(_options(option, components))
    return options


def _kinds_of(schema, components):
    """``(types, items)``: the JSON types a spec schema admits, through ``$ref``, branches and
    type lists, and the schema of its array items if it admits an array."""
    kinds, items = set(), None
    for option in _options(schema, components):
        kind = option.get("type")
        if kind is not None:
            kinds |= {kind} if isinstance(kind, str) else set(kind)
        elif "enum" in option or "const" in option:
            kinds |= {_json_type(v) for v in option.get("enum", [option.get("const")])}
        items = items or option.get("items")
    return kinds, items


def _free_string(schema, components, value):
    """Whether the schema takes the string ``value`` as it is: a branch that is any string,
    or an enum/const that lists it."""
    for option in _options(schema, components):
        kind = option.get("type")
        is_string = kind == "string" or isinstance(kind, list) and "string" in kind
        if "enum" in option or "const" in option:
            if value in option.get("enum", [option.get("const")]):
                return True
        elif is_string:
            return True
    return False


def coerce(value, schema, components):
    """A form or query value (a string, or a list of them) read as ``schema``'s type, so that
    ``"2"`` checks as an integer; what does not read stays as sent and fails the check."""
    if schema is None:
        return value
    kinds, items = _kinds_of(schema, components)
    if isinstance(value, list):
        if "array" in kinds:
            return [coerce(item, items, components) for item in value]
        return value
    if not isinstance(value, str) or _free_string(schema, components, value):
        return value
    return _read_string(value, kinds, items, components)


def _read_string(value, kinds, items, components):
    """``value`` as the first of the schema's types it reads as, else itself."""
    text = value.strip()
    if "integer" in kinds and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in kinds:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return int(text) if _INTEGER.fullmatch(text) else number
    if "boolean" in kinds and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    if text[:1] in ("{", "[") and ("object" in kinds or "array" in kinds):
        try:
            return json.loads(text)
        except ValueError:
            return value
    if "array" in kinds:
        return [coerce(value, items, components)]
    if "null" in kinds and text in ("", "null"):
        return None
    return value
