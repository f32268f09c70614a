"""Request validation against the spec's schemas.

A small, fast subset of JSON Schema as OpenAPI 3.0 uses it: ``type`` (with ``nullable``),
``enum``, ``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``,
``items``, ``properties``, ``required`` and ``oneOf``/``anyOf``. Fields the spec does not know
are let through (``additionalProperties`` is deliberately ignored): newer SDKs send ``tools``,
``seed``, ``response_format``... and the upstream is the judge of those.
"""

from openai_django.errors import InvalidRequest

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


class SchemaError(Exception):
    def __init__(self, message, param):
        super().__init__(message)
        self.message = message
        self.param = param


def _join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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


def check(value, schema, path):
    """Raise :class:`SchemaError` naming ``path`` if ``value`` breaks ``schema``."""
    if not schema:
        return
    if value is None:
        if schema.get("nullable") or "type" not in schema and "oneOf" not in schema:
            return
        raise SchemaError(f"None is not a valid value for '{path}'.", path)
    for combinator in ("oneOf", "anyOf"):
        options = schema.get(combinator)
        if options:
            _check_options(value, options, path)
    kind = schema.get("type")
    if kind:
        test = _TYPES.get(kind)
        if test is not None and not test(value):
            article = "an" if kind[0] in "aeiou" else "a"
            raise SchemaError(
                f"Invalid type for '{path}': expected {article} {kind}, but got "
                f"{_describe(value)} instead.",
                path,
            )
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        raise SchemaError(
            f"Invalid value for '{path}': {value!r} is not one of {enum!r}.", path
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minimum, maximum = schema.get("minimum"), schema.get("maximum")
        if minimum is not None and value < minimum:
            raise SchemaError(f"{value} is less than the minimum of {minimum} - '{path}'", path)
        if maximum is not None and value > maximum:
            raise SchemaError(f"{value} is greater than the maximum of {maximum} - '{path}'",
                              path)
    elif isinstance(value, str):
        min_len, max_len = schema.get("minLength"), schema.get("maxLength")
        if min_len is not None and len(value) < min_len:
            raise SchemaError(f"'{path}' is shorter than {min_len} characters.", path)
        if max_len is not None and len(value) > max_len:
            raise SchemaError(f"'{path}' is longer than {max_len} characters.", path)
    elif isinstance(value, list):
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")
        if min_items is not None and len(value) < min_items:
            raise SchemaError(
                f"'{path}' should have at least {min_items} item(s), got {len(value)}.", path
            )
        if max_items is not None and len(value) > max_items:
            raise SchemaError(
                f"'{path}' should have at most {max_items} item(s), got {len(value)}.", path
            )
        items = schema.get("items")
        if items:
            for index, item in enumerate(value):
                check(item, items, _join(path, index))
    elif isinstance(value, dict):
        check_object(value, schema, path)


def _check_options(value, options, path):
    """Valid if any option matches; otherwise report the error of the option whose type fits
    the value (the most specific complaint), or list the expected types."""
    errors = []
    for option in options:
        try:
            check(value, option, path)
            return
        except SchemaError as exc:
            if _TYPES.get(option.get("type"), lambda v: False)(value):
                errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    kinds = ", ".join(sorted({o.get("type", "value") for o in options}))
    raise SchemaError(
        f"Invalid type for '{path}': {_describe(value)} is not one of the accepted kinds "
        f"({kinds}).",
        path,
    )


def check_object(value, schema, path=""):
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaError(f"Missing required parameter: '{_join(path, name)}'.",
                              _join(path, name))
    properties = schema.get("properties") or {}
    for name, item in value.items():
        prop = properties.get(name)
        if prop is not None:
            check(item, prop, _join(path, name))


def validate_json(operation, body):
    """Validate a parsed JSON body; raise :class:`InvalidRequest` with ``param`` set."""
    if operation.schema is None:
        return
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        check_object(body, operation.schema)
    except SchemaError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


def _coerce_form(value, schema):
    """Multipart fields arrive as strings: read them as the schema's type to check them."""
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "boolean":
            lowered = value.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
    except (TypeError, ValueError):
        pass
    return value


def validate_form(operation, fields, files):
    """Validate multipart ``fields`` ({name: str}) and ``files`` ({name: UploadedFile})."""
    schema = operation.schema or {}
    properties = schema.get("properties") or {}
    for name in schema.get("required", ()):
        if name not in fields and name not in files:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    for name in operation.file_fields:
        if name in fields:
            raise InvalidRequest(
                f"'{name}' must be sent as a file in a multipart/form-data body.", param=name
            )
    for name, value in fields.items():
        prop = properties.get(name)
        if prop is None:
            continue
        try:
            check(_coerce_form(value, prop), prop, name)
        except SchemaError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
    for name in files:
        prop = properties.get(name)
        if prop is not None and name not in operation.file_fields:
            raise InvalidRequest(f"'{name}' must be a form field, not a file.", param=name)


def validate_query(operation, query):
    for name, schema in operation.query_params.items():
        if name in query:
            try:
                check(_coerce_form(query[name], schema), schema, name)
            except SchemaError as exc:
                raise InvalidRequest(exc.message, param=exc.param) from None
