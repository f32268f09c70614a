"""The registry is built from the bundled spec, and validation follows the spec's schemas."""

import pytest
from django.urls import resolve, reverse

from openai_django.errors import InvalidRequest
from openai_django.spec import get_registry
from openai_django.validation import validate_form, validate_json, validate_query

EXPECTED = {
    "createCompletion", "createChatCompletion", "createEdit", "createImage", "createImageEdit",
    "createImageVariation", "createEmbedding", "createModeration", "createTranscription",
    "createTranslation", "listFiles", "createFile", "retrieveFile", "deleteFile", "downloadFile",
    "createFineTune", "listFineTunes", "retrieveFineTune", "cancelFineTune",
    "listFineTuneEvents", "listModels", "retrieveModel", "deleteModel", "listEngines",
    "retrieveEngine", "createSearch", "createAnswer", "createClassification",
}


def test_registry_has_every_operation_of_the_spec():
    # Both specs: the 28 operations of 1.2.0 keep their ids (2.3.0 serves the 17 it shares);
    # the counts per spec are in test_spec_registry.
    registry = get_registry()
    assert EXPECTED <= {op.id for op in registry}
    assert len(registry) == 288 + 11
    assert registry["createImageEdit"].is_multipart
    assert registry["createImageEdit"].file_fields == ("image", "mask")
    assert registry["listFineTuneEvents"].streamable
    assert registry["createChatCompletion"].streamable
    assert not registry["createEmbedding"].streamable
    assert registry["createSearch"].path_params == ("engine_id",)


@pytest.mark.parametrize("op_id", sorted(EXPECTED))
def test_every_operation_has_a_route(op_id):
    op = get_registry()[op_id]
    kwargs = {name: "x-1" for name in op.path_params}
    url = reverse(f"openai_django:{op_id}", kwargs=kwargs)
    assert url == "/v1" + op.upstream_path(kwargs)
    match = resolve(url)
    assert match.func.view_initkwargs["operations"][op.method].id == op_id


def op(op_id):
    return get_registry()[op_id]


def error_of(call, *args):
    with pytest.raises(InvalidRequest) as info:
        call(*args)
    return info.value


def test_missing_required_field_names_the_param():
    exc = error_of(validate_json, op("createChatCompletion"), {"model": "gpt-4o-mini"})
    assert exc.param == "messages"
    assert "Missing required parameter" in exc.message


def test_nested_enum_violation_names_the_path():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"},
                                       {"role": "robot", "content": "x"}]}
    exc = error_of(validate_json, op("createChatCompletion"), body)
    assert exc.param == "messages[1].role"


def test_type_and_range_violations():
    # 2.3.0 requires a prompt for completions (1.2.0 defaulted it to <|endoftext|>).
    exc = error_of(validate_json, op("createCompletion"),
                   {"model": "m", "prompt": "p", "temperature": "hot"})
    assert exc.param == "temperature" and "number" in exc.message
    exc = error_of(validate_json, op("createCompletion"),
                   {"model": "m", "prompt": "p", "temperature": 3})
    assert exc.param == "temperature" and "maximum" in exc.message
    exc = error_of(validate_json, op("createImage"), {"prompt": "p", "n": 11})
    assert exc.param == "n"
    # 2.3.0 takes any WIDTHxHEIGHT string for size (gpt-image-2): a number is still wrong.
    exc = error_of(validate_json, op("createImage"), {"prompt": "p", "size": 1024})
    assert exc.param == "size"
    exc = error_of(validate_json, op("createImage"), {"prompt": "p", "response_format": "gif"})
    assert exc.param == "response_format" and "Invalid value for 'response_format'" in exc.message
    exc = error_of(validate_json, op("createChatCompletion"), {"model": "m", "messages": []})
    assert exc.param == "messages"


def test_boolean_is_not_a_number_and_null_needs_nullable():
    exc = error_of(validate_json, op("createCompletion"),
                   {"model": "m", "prompt": "p", "max_tokens": True})
    assert exc.param == "max_tokens"
    validate_json(op("createCompletion"), {"model": "m", "prompt": "p", "max_tokens": None})
    exc = error_of(validate_json, op("createChatCompletion"), {"model": None, "messages": []})
    assert exc.param == "model"


def test_one_of_accepts_each_form_and_rejects_others():
    for prompt in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], None):
        validate_json(op("createCompletion"), {"model": "m", "prompt": prompt})
    exc = error_of(validate_json, op("createCompletion"), {"model": "m", "prompt": {"a": 1}})
    assert exc.param == "prompt"


def test_unknown_fields_and_todays_message_shapes_pass():
    body = {
        # 2.3.0 knows tools and tool calls, and requires their function (1.2.0 let any pass).
        "model": "gpt-4o-mini", "seed": 7, "new_sdk_field": {"x": 1},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"}, "max_completion_tokens": 9,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "{}", "tool_call_id": "c1"},
        ],
    }
    validate_json(op("createChatCompletion"), body)


def test_body_must_be_an_object():
    exc = error_of(validate_json, op("createEmbedding"), ["not", "an", "object"])
    assert "JSON object" in exc.message


def test_multipart_fields_are_read_as_their_schema_type():
    image_edit = op("createImageEdit")
    validate_form(image_edit, {"prompt": "p", "n": "2", "size": "256x256"}, {"image": object()})
    exc = error_of(validate_form, image_edit, {"prompt": "p", "n": "twelve"}, {"image": 1})
    assert exc.param == "n"
    exc = error_of(validate_form, image_edit, {"prompt": "p"}, {})
    assert exc.param == "image"
    exc = error_of(validate_form, image_edit, {"prompt": "p", "image": "not-a-file"}, {})
    assert exc.param == "image"
    exc = error_of(validate_form, op("createTranscription"), {"model": "whisper-1"}, {})
    assert exc.param == "file"
    exc = error_of(validate_form, op("createTranscription"),
                   {"model": "whisper-1", "temperature": "warm"}, {"file": 1})
    assert exc.param == "temperature"


def test_query_parameters_are_checked():
    events = op("listFineTuneEvents")
    validate_query(events, {"stream": "true"})
    exc = error_of(validate_query, events, {"stream": "maybe"})
    assert exc.param == "stream"
