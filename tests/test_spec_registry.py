"""The registry holds both bundled specs: 2.3.0 where both describe an operation, 1.2.0 for
what only it has, query variants beside their primaries."""

import collections

import pytest

from openai_django import spec
from openai_django.spec import get_registry

pytestmark = pytest.mark.once  # no database or storage of the run's own

ONLY_1_2_0 = {
    "listEngines", "retrieveEngine", "createSearch", "createAnswer", "createClassification",
    "createEdit", "createFineTune", "listFineTunes", "retrieveFineTune", "cancelFineTune",
    "listFineTuneEvents",
}
BETA = {
    "beta_createResponse", "beta_getResponse", "beta_deleteResponse", "beta_cancelResponse",
    "beta_Compactconversation", "beta_listInputItems", "beta_Getinputtokencounts",
}


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_counts_per_spec(registry):
    by_spec = collections.Counter(op.spec for op in registry)
    assert by_spec == {"2.3.0": 288, "1.2.0": 11}
    assert {op.id for op in registry if op.spec == "1.2.0"} == ONLY_1_2_0
    assert registry["createChatCompletion"].spec == "2.3.0"


def test_admin_operations_are_flagged(registry):
    admin = [op for op in registry if op.admin]
    assert len(admin) == 119
    assert all(op.spec == "2.3.0" for op in admin)
    assert registry["list-audit-logs"].admin
    assert not registry["createResponse"].admin


def test_beta_variants_are_selected_by_query(registry):
    variants = {op.id for op in registry if op.query_match}
    assert variants == BETA
    primaries = [op for ops in registry.by_path().values() for op in ops.values()]
    assert len(primaries) == 299 - 7
    assert not any(op.query_match for op in primaries)
    create = registry["createResponse"]
    beta = registry["beta_createResponse"]
    assert beta.path == "/responses" and beta.query_match == {"beta": "true"}
    assert registry.select(create, "beta=true") is beta
    assert registry.select(create, "stream=1&beta=true") is beta
    assert registry.select(create, "") is create
    assert registry.select(create, "beta=false") is create
    assert registry.select(registry["listModels"], "beta=true") is registry["listModels"]


def test_literal_paths_route_before_parameters(registry):
    order = list(registry.by_path())
    assert order.index("/responses/compact") < order.index("/responses/{response_id}")


def test_file_fields_media_and_streams(registry):
    edit = registry["createImageEdit"]
    assert edit.spec == "2.3.0" and edit.is_multipart
    assert edit.file_fields == ("image", "mask")  # image: a file or an array of files
    assert registry["createTranscription"].file_fields == ("file",)
    assert registry["createSpeech"].response_types[0] == "application/octet-stream"
    assert registry["createResponse"].response_types == ("application/json",
                                                         "text/event-stream")
    streamable = {op.id for op in registry if op.streamable}
    assert {"createResponse", "createChatCompletion", "createCompletion", "createSpeech",
            "createTranscription", "createImage", "createImageEdit",
            "listFineTuneEvents"} <= streamable
    assert not {"createEmbedding", "listModels", "createBatch"} & streamable


def test_schema_properties_and_examples(registry):
    chat = registry["createChatCompletion"]
    assert chat.schema is not None and {"model", "messages", "stream"} <= set(chat.properties)
    assert chat.request_examples and "messages" in chat.request_examples[0]
    assert registry["createSearch"].request_examples  # 1.2.0: x-oaiMeta.parameters
    assert registry["createEdit"].request_examples == []  # a trailing comma: not JSON
    assert registry["listModels"].schema is None and registry["listModels"].properties == {}
    assert set(registry["listFiles"].query_params) >= {"purpose", "limit"}
    assert all((op.schema is not None) == (op.content_type is not None) for op in registry)


def test_spec_bytes_defaults_to_1_2_0():
    assert b"version: 1.2.0" in spec.spec_bytes()[:2000]
    assert b"openapi: 3.1" in spec.spec_bytes("2.3.0")[:200]


def test_curl_body():
    curl = "curl https://x \\\n  -H 'A: b' \\\n  -d '{\n  \"model\": \"m\"\n}'\n"
    assert spec.curl_body(curl) == {"model": "m"}
    assert spec.curl_body("curl https://x -F file=@a.png") is None
    assert spec.curl_body("curl -d '{not json}'") is None


def test_document_cache_is_used_and_never_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_DJANGO_SPEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "doc.yaml"
    source.write_text("openapi: 3.1.0\ninfo: {version: '1', date: 2024-10-01}\n")
    first = spec.load_document(source)
    assert first["info"]["date"] == "2024-10-01"
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert spec.load_document(source) == first
    source.write_text("openapi: 3.1.0\ninfo: {version: '2'}\n")
    assert spec.load_document(source)["info"]["version"] == "2"


def test_unwritable_cache_falls_back_to_parsing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("OPENAI_DJANGO_SPEC_CACHE", str(blocker / "cache"))
    source = tmp_path / "doc.yaml"
    source.write_text("a: 1\n")
    assert spec.load_document(source) == {"a": 1}
