"""``manage.py check`` on the upstreams' settings, and what each setting builds."""

import pytest

from openai_django import upstreams
from openai_django.checks import check_settings

pytestmark = pytest.mark.once


def ids(settings, **options):
    settings.OPENAI_DJANGO = {**(getattr(settings, "OPENAI_DJANGO", {}) or {}), **options}
    return {e.id: e.msg for e in check_settings(None)}


def test_bad_upstreams_settings_are_errors(settings, tmp_path):
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test/v1", "kind": "bedrock"}})
    assert "kind" in found["openai_django.E101"]
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test/v1", "colour": 1}})
    assert "colour" in found["openai_django.E101"]
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test/v1"}},
                FALLBACKS={"gpt-4o": ["x", "nowhere"]})
    assert "nowhere" in found["openai_django.E101"]
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test", "kind": "azure"}},
                FALLBACKS={})
    assert "api_version" in found["openai_django.E101"]
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test/v1",
                                           "proxy": "https://proxy.test:3128"}})
    assert "only http://" in found["openai_django.E101"]
    found = ids(settings, UPSTREAMS={"x": {"base_url": "https://x.test/v1", "api_key": "k",
                                           "ca_bundle": str(tmp_path / "missing.pem")}})
    assert "missing.pem" in found["openai_django.E102"]


def test_warnings_for_an_upstream_without_key_or_on_plain_http(settings):
    settings.DEBUG = False
    found = ids(settings, API_KEY=None, UPSTREAMS={
        "x": {"base_url": "http://10.1.2.3:8000/v1"},
        "local": {"base_url": "http://127.0.0.1:8000/v1", "kind": "compatible"}})
    assert "'x'" in found["openai_django.W101"] and "'x'" in found["openai_django.W102"]
    assert "openai_django.W002" not in found and "openai_django.W003" not in found
    assert "openai_django.E101" not in found


def test_what_the_settings_build(settings, monkeypatch):
    monkeypatch.setenv("AZ_KEY", "from-env")
    settings.OPENAI_DJANGO = {"UPSTREAMS": [
        {"name": "az", "kind": "azure", "base_url": "https://r.openai.azure.com/openai/",
         "api_key_env": "AZ_KEY", "api_version": "2024-10-21",
         "models": {"gpt-4o": "prod-4o", "ft:*": "*"}},
        {"name": "v1", "kind": "azure", "base_url": "https://r.openai.azure.com/openai/v1",
         "api_key": "k"},
    ], "DEFAULT_UPSTREAM": "v1"}
    cfg = upstreams.config()
    az, v1 = cfg.upstreams["az"], cfg.upstreams["v1"]
    assert az.base_url == "https://r.openai.azure.com" and az.azure_style == "deployments"
    assert az.api_key == "from-env" and "from-env" not in repr(az)
    assert az.serves("gpt-4o") == "prod-4o" and az.serves("ft:my-model") == "my-model"
    assert az.serves("gpt-4o-mini") is None
    assert v1.azure_style == "v1" and v1.api_version is None and cfg.default == "v1"
    assert az.client_options()["key_header"] == "api-key"


def test_the_error_of_azure_in_openais_shape():
    assert upstreams.openai_error({"error": {"code": "429", "message": "slow down"}}, 429) == {
        "code": "429", "message": "slow down", "type": "rate_limit_error", "param": None}
    assert upstreams.openai_error({"statusCode": 401, "message": "Access denied"}, 401) == {
        "code": None, "message": "Access denied", "type": "invalid_request_error",
        "param": None}
    content_filter = {"error": {"code": "content_filter", "message": "filtered",
                                "param": "prompt", "status": 400,
                                "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
    mapped = upstreams.openai_error(content_filter, 400)
    assert mapped["innererror"] == {"code": "ResponsibleAIPolicyViolation"}
    assert mapped["param"] == "prompt" and mapped["type"] == "invalid_request_error"
