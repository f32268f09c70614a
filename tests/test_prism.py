"""The gateway against an independent upstream: Prism (from npm) mocking the bundled spec.

Prism (the session fixture ``prism`` in tests/fixtures/services.py) checks every request it
receives against the spec (a request the gateway mangled gets a 422) and answers bodies made
from the spec's response schemas, so this covers every non-streaming operation with an
upstream this project did not write.
"""


import json

import pytest

from openai_django.models import Call
from openai_django.spec import get_registry

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300

# One valid request per operation: (method, path, json or None, form fields, files).
REQUESTS = {
    "listEngines": ("GET", "/engines", None, None, None),
    "retrieveEngine": ("GET", "/engines/davinci", None, None, None),
    "createCompletion": ("POST", "/completions",
                         {"model": "text-davinci-003", "prompt": "Say this is a test"}, None,
                         None),
    "createChatCompletion": ("POST", "/chat/completions",
                             {"model": "gpt-3.5-turbo",
                              "messages": [{"role": "user", "content": "Hello"}]}, None, None),
    "createEdit": ("POST", "/edits", {"model": "text-davinci-edit-001", "input": "wek",
                                      "instruction": "Fix the spelling"}, None, None),
    "createImage": ("POST", "/images/generations", {"prompt": "an otter", "n": 1,
                                                    "response_format": "b64_json"}, None, None),
    "createImageEdit": ("POST", "/images/edits", None, {"prompt": "a hat", "n": "1"},
                        {"image": ("i.png", PNG, "image/png"),
                         "mask": ("m.png", PNG, "image/png")}),
    "createImageVariation": ("POST", "/images/variations", None, {"n": "1"},
                             {"image": ("i.png", PNG, "image/png")}),
    "createEmbedding": ("POST", "/embeddings", {"model": "text-embedding-ada-002",
                                                "input": "The food was delicious"}, None, None),
    "createTranscription": ("POST", "/audio/transcriptions", None, {"model": "whisper-1"},
                            {"file": ("a.mp3", b"ID3" + b"\x00" * 200, "audio/mpeg")}),
    "createTranslation": ("POST", "/audio/translations", None, {"model": "whisper-1"},
                          {"file": ("a.mp3", b"ID3" + b"\x00" * 200, "audio/mpeg")}),
    "createSearch": ("POST", "/engines/davinci/search",
                     {"query": "the president", "documents": ["White House", "school"]}, None,
                     None),
    "listFiles": ("GET", "/files", None, None, None),
    "createFile": ("POST", "/files", None, {"purpose": "fine-tune"},
                   {"file": ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n',
                             "application/jsonl")}),
    "deleteFile": ("DELETE", "/files/file-abc123", None, None, None),
    "retrieveFile": ("GET", "/files/file-abc123", None, None, None),
    "downloadFile": ("GET", "/files/file-abc123/content", None, None, None),
    "createAnswer": ("POST", "/answers", {
        "model": "curie", "question": "which puppy is happy?",
        "examples": [["What is human life expectancy?", "78 years."]],
        "examples_context": "In 2017, U.S. life expectancy was 78.6 years.",
        "documents": ["Puppy A is happy.", "Puppy B is sad."]}, None, None),
    "createClassification": ("POST", "/classifications", {
        "model": "curie", "query": "It is a raining day :(",
        "examples": [["A happy moment", "Positive"], ["I am sad.", "Negative"]],
        "labels": ["Positive", "Negative"]}, None, None),
    "createFineTune": ("POST", "/fine-tunes", {"training_file": "file-abc123"}, None, None),
    "listFineTunes": ("GET", "/fine-tunes", None, None, None),
    "retrieveFineTune": ("GET", "/fine-tunes/ft-abc123", None, None, None),
    "cancelFineTune": ("POST", "/fine-tunes/ft-abc123/cancel", None, None, None),
    "listFineTuneEvents": ("GET", "/fine-tunes/ft-abc123/events", None, None, None),
    "listModels": ("GET", "/models", None, None, None),
    "retrieveModel": ("GET", "/models/text-davinci-003", None, None, None),
    "deleteModel": ("DELETE", "/models/curie:ft-acmeco-2021", None, None, None),
    "createModeration": ("POST", "/moderations", {"input": "I want to hug you"}, None, None),
}


def test_the_table_covers_every_operation():
    from openai_django.spec import load_document

    legacy = load_document()  # the 1.2.0 document this table is for
    assert set(REQUESTS) == {op["operationId"] for item in legacy["paths"].values()
                             for op in item.values() if isinstance(op, dict)}
    assert set(REQUESTS) <= {op.id for op in get_registry()}


@pytest.mark.parametrize("op_id", sorted(REQUESTS))
def test_operation_through_gateway_to_prism(op_id, prism, live_server, http, settings,
                                            media_root):
    # Prism serves the spec's paths without the servers' /v1: its origin is the base URL.
    settings.OPENAI_DJANGO = {"BASE_URL": prism.url, "API_KEY": "sk-prism-0000"}
    method, path, body, form, files = REQUESTS[op_id]
    url = f"{live_server.url}/v1{path}"
    response = http.request(method, url, json=body, data=form, files=files)
    assert response.status_code == 200, response.text
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == op_id
    assert call.status == Call.Status.SUCCEEDED, (call.outcome, call.error)
    assert call.response_status == 200
    if "json" in response.headers.get("Content-Type", ""):
        # As numbers: PostgreSQL's jsonb keeps a number's decimal digits, not its JSON
        # spelling (Prism's -3.402823669209385e+38 reads back as an integer literal).
        assert as_numbers(call.response_body) == as_numbers(response.json())


# -- today's spec (2.3.0) ------------------------------------------------------------------------
#
# Prism (fixture ``prism_2_3_0``) serves openapi-2.3.0.yaml as is: Prism 5.14 accepts the
# OpenAPI 3.1 document of 3 MB unchanged, in ~17 s. Every operation that is not organization
# administration and can be asked without a stream is sent through the gateway with a request
# built from the spec: its example body where the registry has one that the request schema
# accepts, else the schema's required fields with valid values (multipart: small files).

SAMPLE_FILES = {"image": ("i.png", PNG, "image/png"), "mask": ("m.png", PNG, "image/png")}
AUDIO = ("a.mp3", b"ID3" + b"\x00" * 200, "audio/mpeg")

#: Operations Prism cannot answer through the gateway, and why. None: every one answers.
PRISM_EXCLUDED = {
}

#: Operations whose spec example Prism rejects (422), so the body is built from the schema:
SCHEMA_NOT_EXAMPLE = {
    # The request schema is RealtimeSessionCreateResponse (client_secret required); the
    # example, a request, has none.
    "create-realtime-session",
    # items[1] of the example (a function_call_output) matches two oneOf branches of Item:
    # Prism applies oneOf strictly ("must match exactly one schema").
    "createConversationItems",
    # The example's testing_criteria[0] has no 'operation' (required by the grader schema).
    "createEval",
}


def _components():
    return get_registry().documents["2.3.0"].get("components", {})


def sample(schema, components, depth=0):
    """A valid value for ``schema``: required properties only, first options, minimal sizes."""
    from openai_django.spec import deref

    schema = deref(schema, components)
    if not isinstance(schema, dict) or depth > 12:
        return "x"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return next((v for v in schema["enum"] if v is not None), schema["enum"][0])
    if "default" in schema and schema["default"] is not None and depth > 0:
        return schema["default"]
    if "allOf" in schema:
        merged = {}
        for part in schema["allOf"]:
            value = sample(part, components, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        own = {k: v for k, v in schema.items() if k != "allOf"}
        if own.get("properties") or own.get("required"):
            merged.update(sample(own, components, depth + 1))
        return merged
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [deref(o, components) for o in schema[key]]
            if schema.get("properties"):
                # ``anyOf: [{required: [a]}, {required: [b]}]`` beside the properties.
                base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                options = [{**base, **o, "required": [*base.get("required", ()),
                                                       *o.get("required", ())]}
                           for o in options]
            options = [o for o in options if o.get("type") != "null"] or options
            # A string option is the smallest valid value when there is one.
            simple = [o for o in options if o.get("type") == "string" and "enum" not in o
                      and "format" not in o]
            return sample(simple[0] if simple else options[0], components, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: sample(props.get(name, {}), components, depth + 1)
                for name in schema.get("required", ())}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [sample(schema.get("items", {}), components, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1)) if schema.get("minimum", 1) > 0 else 1
    if kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    fmt = schema.get("format")
    if fmt == "binary":
        return b"data"
    if fmt == "uri":
        return "https://example.com/x"
    value = "x" * max(1, schema.get("minLength", 1))
    return value


def _valid(op, body):
    """Whether the gateway's own validator accepts ``body`` for ``op``."""
    from openai_django import validation
    from openai_django.errors import OpenAIDjangoError

    try:
        validation.validate_json(op, body)
    except OpenAIDjangoError:
        return False
    return True


def build_request(op):
    """``(method, path, json, form, files)`` of a valid request for ``op``."""
    components = _components()
    path = op.path
    for name in op.path_params:
        path = path.replace("{" + name + "}", f"{name.removesuffix('_id')}_abc123")
    params = {}
    for name, schema in op.query_params.items():
        if name in _required_query(op):
            params[name] = sample(schema, components)
    if params:
        from urllib.parse import urlencode

        path += "?" + urlencode(params, doseq=True)
    if op.schema is None:
        return op.method, path, None, None, None
    if op.is_multipart:
        body = sample(op.schema, components)
        form, files = {}, []
        for name, value in body.items():
            if name in op.file_fields:
                upload = SAMPLE_FILES.get(name) or (
                    AUDIO if "audio" in op.path or name == "file" and "audio" in op.path
                    else ("f.jsonl", b'{"a": 1}\n', "application/jsonl"))
                files.append((name, upload))
            elif isinstance(value, (dict, list)):
                form[name] = json.dumps(value)
            else:
                form[name] = str(value).lower() if isinstance(value, bool) else str(value)
        # Every field as a part, so that requests sends multipart even without a file.
        files.extend((name, (None, value)) for name, value in form.items())
        return op.method, path, None, None, files
    body = None
    for example in op.request_examples if op.id not in SCHEMA_NOT_EXAMPLE else ():
        if isinstance(example, dict) and not example.get("stream") and _valid(op, example):
            body = example
            break
    if body is None:
        body = sample(op.schema, components)
    return op.method, path, body, None, None


def _required_query(op):
    document = get_registry().documents["2.3.0"]
    components = document.get("components", {})
    from openai_django.spec import deref

    for spec_path, item in document["paths"].items():
        if spec_path.partition("?")[0] == op.path and op.method.lower() in item:
            found = item[op.method.lower()]
            if found.get("operationId") != op.id:
                continue
            params = [deref(p, components) for p in item.get("parameters", [])
                      + found.get("parameters", [])]
            return {p["name"] for p in params if p.get("in") == "query" and p.get("required")}
    return set()


TODAY = sorted(op.id for op in get_registry()
               if op.spec == "2.3.0" and not op.admin and not op.query_match)


def _today_params():
    """Every operation in the first run; in the second (PostgreSQL + S3), one of each shape:
    its kind, its method, with or without a body (29 of 162). What Prism checks (the request
    and answer against the spec) does not depend on the database; what does (the record) is
    the same for operations of one shape."""
    from openai_django import kinds

    registry, seen, params = get_registry(), set(), []
    for op_id in TODAY:
        op = registry[op_id]
        shape = (type(kinds.of(op)).__name__, op.method, bool(op.content_types))
        params.append(op_id if shape not in seen else pytest.param(op_id, marks=pytest.mark.once))
        seen.add(shape)
    return params


def test_prism_2_3_0_starts_and_serves_the_spec(prism_2_3_0):
    # Measured, not assumed: the fixture's wait must be well above it.
    assert prism_2_3_0.start_seconds < 180
    import requests

    answer = requests.get(f"{prism_2_3_0.url}/models",
                          headers={"Authorization": "Bearer sk-x"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["object"] == "list"


@pytest.mark.parametrize("op_id", _today_params())
def test_today_operation_through_gateway_to_prism(op_id, prism_2_3_0, live_server, http,
                                                 settings, media_root):
    if op_id in PRISM_EXCLUDED:
        pytest.skip(PRISM_EXCLUDED[op_id])
    op = get_registry()[op_id]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "BASE_URL": prism_2_3_0.url,
                              "API_KEY": "sk-prism-0000"}
    method, path, body, form, files = build_request(op)
    response = http.request(method, f"{live_server.url}/v1{path}", json=body, data=form,
                            files=files, headers={"Accept": "application/json"})
    assert 200 <= response.status_code < 300, (method, path, body, form,
                                               response.text[:1000])
    call = Call.objects.get(pk=response.headers["X-Call-Id"])
    assert call.operation == op_id
    assert call.status == Call.Status.SUCCEEDED, (call.outcome, call.error)
    assert call.response_status == response.status_code
    if "json" in response.headers.get("Content-Type", ""):
        # As numbers: PostgreSQL's jsonb keeps a number's decimal digits, not its JSON
        # spelling (Prism's -3.402823669209385e+38 reads back as an integer literal).
        assert as_numbers(call.response_body) == as_numbers(response.json())


def as_numbers(value):
    """``value`` with every number as a float, to compare JSON as values."""
    if isinstance(value, dict):
        return {k: as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_numbers(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
