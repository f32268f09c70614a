"""Validation against both specs: every request example of the specs passes, wrong values of
each family are 400s naming the field, and no value of any JSON type raises anything else."""

import json

import pytest

from openai_django.errors import InvalidRequest
from openai_django.spec import get_registry
from openai_django.validation import validate_form, validate_json, validate_query

pytestmark = pytest.mark.once  # no database or storage of the run's own

# Examples the spec itself gets wrong (the schema is right, the example is not); each is
# checked to keep failing, so a fixed spec shows up here. Where the schema is the one that is
# wrong (a field it requires that the API does not), validation.OPTIONAL relaxes it instead.
SPEC_EXAMPLE_ERRORS = {
    # ChatKit sessions are scoped to a `user` (required, and documented so); the example
    # leaves it out.
    ("CreateChatSessionMethod", 0): "user",
}


def _examples():
    for op in get_registry():
        for index, body in enumerate(op.request_examples):
            yield pytest.param(op.id, index, body, id=f"{op.id}-{index}")


def op(op_id):
    return get_registry()[op_id]


def error_of(call, *args):
    with pytest.raises(InvalidRequest) as info:
        call(*args)
    return info.value


def test_both_specs_give_examples():
    specs = {get_registry()[p.values[0]].spec for p in _examples()}
    assert specs == {"1.2.0", "2.3.0"}
    assert len(list(_examples())) > 100


@pytest.mark.parametrize("op_id, index, body", list(_examples()))
def test_every_request_example_passes(op_id, index, body):
    if (op_id, index) in SPEC_EXAMPLE_ERRORS:
        exc = error_of(validate_json, op(op_id), body)
        assert exc.param == SPEC_EXAMPLE_ERRORS[op_id, index]
        return
    validate_json(op(op_id), body)


# -- families -------------------------------------------------------------------------------


def test_responses():
    create = op("createResponse")
    validate_json(create, {"model": "gpt-5.4", "input": "hi", "future_field": 1})
    exc = error_of(validate_json, create, {"model": "m", "input": 5})
    assert exc.param == "input" and "expected a string or an array" in exc.message
    exc = error_of(validate_json, create, {"model": "m", "input": [{"type": "bogus"}]})
    assert exc.param == "input[0].type" and "'function_call'" in exc.message
    body = {"model": "m", "input": [{"role": "user",
                                     "content": [{"type": "input_text", "text": 3}]}]}
    exc = error_of(validate_json, create, body)
    assert exc.param == "input[0].content[0].text"
    exc = error_of(validate_json, op("beta_createResponse"), {"model": "m", "input": 5})
    assert exc.param == "input"


def test_chat_messages_by_role():
    chat = op("createChatCompletion")
    exc = error_of(validate_json, chat, {"model": "m", "messages": [{"content": "x"}]})
    assert exc.param == "messages[0].role" and "Missing required parameter" in exc.message
    exc = error_of(validate_json, chat, {"model": "m", "messages": [{"role": "robot"}]})
    assert exc.param == "messages[0].role" and "'developer'" in exc.message
    exc = error_of(validate_json, chat, {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": 5}]}]})
    assert exc.param == "messages[0].content[0].text"
    assert exc.message == ("Invalid type for 'messages[0].content[0].text': expected a string, "
                           "but got a number instead.")


def test_speech_batches_embeddings():
    exc = error_of(validate_json, op("createSpeech"), {"model": "tts-1", "input": "x"})
    assert exc.param == "voice" and exc.message == "Missing required parameter: 'voice'."
    batch = {"input_file_id": "f", "endpoint": "/v1/chat/completions",
             "completion_window": "24h"}
    validate_json(op("createBatch"), batch)
    exc = error_of(validate_json, op("createBatch"), {**batch, "completion_window": "48h"})
    assert exc.param == "completion_window"
    assert exc.message.startswith("Invalid value for 'completion_window': '48h'.")
    exc = error_of(validate_json, op("createEmbedding"), {"model": "m", "input": {"a": 1}})
    assert exc.param == "input"


def test_1_2_0_operations_keep_their_schema():
    # nullable (OpenAPI 3.0) allows null; the spec's minimum/maximum still hold.
    validate_json(op("createEdit"), {"model": "m", "instruction": "i", "input": None})
    exc = error_of(validate_json, op("createEdit"), {"model": "m", "instruction": "i",
                                                     "temperature": 5})
    assert exc.param == "temperature" and "maximum of 2" in exc.message
    exc = error_of(validate_json, op("createEdit"), {"model": "m"})
    assert exc.param == "instruction"


BAD_VALUES = [1, 1.5, -1, True, None, "x", "", [], [1], [None], {}, {"a": [1]}, [{}],
              [{"type": "x"}], {"type": "x"}, [{"role": "user", "content": [{"type": "text",
                                                                            "text": 5}]}]]


def test_no_value_raises_anything_but_invalid_request():
    # Every top-level field of every operation with a body, set to values of each JSON type
    # (on top of the operation's first example, so the rest of the body is right).
    for operation in get_registry():
        if operation.schema is None:
            continue
        base = operation.request_examples[0] if operation.request_examples else {}
        for name in {*operation.properties, *base}:
            for value in BAD_VALUES:
                try:
                    if operation.is_multipart:
                        validate_form(operation, {name: json.dumps(value)}, {})
                    else:
                        validate_json(operation, {**base, name: value})
                except InvalidRequest as exc:
                    assert exc.message and (exc.param is None or isinstance(exc.param, str))


def test_nested_bad_values_are_400s_naming_the_param():
    chat = op("createChatCompletion")
    for messages in (1, True, "x", {}, [1], [[]], [{"role": 1}], [{"role": "user", "content": 1}]):
        exc = error_of(validate_json, chat, {"model": "m", "messages": messages})
        assert exc.param and exc.param.startswith("messages")


# -- forms and queries ------------------------------------------------------------------------


def test_image_edit_form_takes_arrays_of_images():
    edit = op("createImageEdit")
    validate_form(edit, {"prompt": "p", "n": "2", "model": "gpt-image-1"}, {"image[]": object()})
    validate_form(edit, {"prompt": "p"}, {"image": object(), "mask": object()})
    exc = error_of(validate_form, edit, {"prompt": "p", "image[]": "text"}, {})
    assert exc.param == "image" and "as a file" in exc.message
    exc = error_of(validate_form, edit, {"prompt": "p", "n": "twelve"}, {"image": 1})
    assert exc.param == "n" and "integer" in exc.message
    exc = error_of(validate_form, edit, {"prompt": "p"}, {"image": 1, "prompt": 1})
    assert exc.param == "prompt" and "form field" in exc.message


def test_transcription_form_fields_are_coerced():
    transcribe = op("createTranscription")
    fields = {"model": "whisper-1", "temperature": "0.5", "stream": "true",
              "timestamp_granularities[]": ["word", "segment"], "chunking_strategy": "auto"}
    validate_form(transcribe, fields, {"file": 1})
    validate_form(transcribe, {"model": "whisper-1", "timestamp_granularities[]": "word"},
                  {"file": 1})
    exc = error_of(validate_form, transcribe, {"model": "whisper-1",
                                               "timestamp_granularities[]": ["day"]}, {"file": 1})
    assert exc.param == "timestamp_granularities[0]"
    exc = error_of(validate_form, transcribe, {"model": "whisper-1", "stream": "maybe"},
                   {"file": 1})
    assert exc.param == "stream"
    exc = error_of(validate_form, transcribe, {"model": "whisper-1"}, {})
    assert exc.param == "file"


def test_query_parameters_are_coerced():
    files = op("listFiles")
    validate_query(files, {"limit": "10", "order": "asc", "unknown": "x"})
    exc = error_of(validate_query, files, {"limit": "ten"})
    assert exc.param == "limit"
    exc = error_of(validate_query, files, {"order": "up"})
    assert exc.param == "order" and "'asc', 'desc'" in exc.message
    validate_query(op("getResponse"), {"include[]": "message.output_text.logprobs"})
    validate_query(op("listFineTuneEvents"), {"stream": "false"})
