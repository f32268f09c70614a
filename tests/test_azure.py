"""Azure OpenAI as an upstream: ``api-key``, ``api-version``, deployment paths and the newer
``/openai/v1/`` style, Azure's error bodies answered in OpenAI's shape, fallbacks between
Azure and OpenAI, files kept on Azure read back from Azure; today's SDK and the 2023 SDK.

Azure is :class:`openai_django.testing.azure.AzureStandin` (Azure's dialect on loopback) in
front of a stand-in of its own; "openai" is the session's stand-in.
"""

import json
import os
import subprocess

import pytest

from openai_django.models import Call
from openai_django.testing import StandinServer
from openai_django.testing.azure import AzureStandin

from .test_sdk_legacy import sdk028_interpreter

pytestmark = pytest.mark.django_db(transaction=True)

AZURE_KEY = "azure-key-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def azure_backend():
    with StandinServer(api_key="sk-azure-backend-0000") as server:
        yield server


@pytest.fixture(scope="module")
def azure(azure_backend):
    with AzureStandin(azure_backend, api_key=AZURE_KEY,
                      deployments={"prod-4o": "gpt-4o", "emb-small": "text-embedding-3-small"}
                      ) as server:
        yield server


@pytest.fixture
def sites(upstream, azure, azure_backend, settings):
    azure.log.clear()
    azure_backend.clear_faults()
    azure_backend.clear_requests()
    settings.OPENAI_DJANGO = {
        **settings.OPENAI_DJANGO,
        "UPSTREAMS": {
            "azure": {"kind": "azure", "base_url": azure.url, "api_key": AZURE_KEY,
                      "api_version": "2024-10-21",
                      "models": [{"match": "gpt-4o", "rename": "prod-4o"},
                                 {"match": "text-embedding-3-small", "rename": "emb-small"},
                                 {"match": "missing-*", "rename": "nowhere"}]},
            "openai": {"base_url": upstream.url, "api_key": "sk-upstream-secret-0000",
                       "models": ["gpt-*", "text-*"]},
        },
        "DEFAULT_UPSTREAM": "openai",
        "FALLBACKS": {"gpt-4o": ["azure", "openai"]},
        "CIRCUIT_BREAKER": {"threshold": 100, "cooldown": 1.0, "backend": "db"},
    }
    yield {"azure": azure, "backend": azure_backend, "openai": upstream}
    azure_backend.clear_faults()


def call_of(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def test_chat_goes_to_the_deployment_with_api_key_and_version(http, sites):
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    seen = sites["azure"].log[-1]
    assert seen["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["api_key"] and not seen["authorization"]
    call = call_of(response)
    assert call.upstream == "azure" and call.model == "gpt-4o"
    assert call.upstream_request_id  # Azure's apim-request-id
    assert AZURE_KEY not in json.dumps(call.request_headers)


def test_stream_and_embeddings_through_azure(http, sites):
    response = http.post(f"{http.base}/chat/completions", stream=True,
                         json={"model": "gpt-4o", "messages": HELLO, "stream": True})
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]" and len(lines) > 2
    response = http.post(f"{http.base}/embeddings",
                         json={"model": "text-embedding-3-small", "input": "hi"})
    assert response.status_code == 200 and response.json()["data"][0]["embedding"]
    assert sites["azure"].log[-1]["path"] == "/openai/deployments/emb-small/embeddings"


def test_azure_errors_are_answered_in_openais_shape(http, sites):
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "missing-model", "messages": HELLO})
    assert response.status_code == 404
    assert response.json() == {"error": {
        "message": response.json()["error"]["message"], "type": "invalid_request_error",
        "param": None, "code": "DeploymentNotFound"}}
    assert "deployment" in response.json()["error"]["message"]
    call = call_of(response)
    assert call.error["code"] == "DeploymentNotFound" and call.upstream == "azure"


def test_wrong_azure_key_is_a_clean_401(http, sites, settings):
    upstreams = dict(settings.OPENAI_DJANGO["UPSTREAMS"])
    upstreams["azure"] = {**upstreams["azure"], "api_key": "wrong"}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "UPSTREAMS": upstreams}
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "401" and error["type"] == "invalid_request_error"
    assert set(error) >= {"message", "type", "param", "code"}


def test_azure_429_falls_back_to_openai(http, sites):
    sites["backend"].fault(path="/v1/chat/completions", kind="status", status=429, times=1)
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 200
    call = call_of(response)
    assert call.upstream == "openai"
    assert [(a["upstream"], a["status"]) for a in call.upstream_attempts] == \
        [("azure", 429), ("openai", 200)]
    assert call.upstream_attempts[0]["model"] == "prod-4o"
    sent = [r for r in sites["openai"].requests() if r["path"] == "/v1/chat/completions"]
    assert sent[-1]["body"]["model"] == "gpt-4o"


def test_files_on_azure_are_read_back_from_azure(http, sites, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "DEFAULT_UPSTREAM": "azure"}
    upload = http.post(f"{http.base}/files", files={"file": ("b.jsonl", b'{"n": 1}\n')},
                       data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    assert sites["azure"].log[-1]["path"] == "/openai/files"
    file_id = upload.json()["id"]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "DEFAULT_UPSTREAM": "openai"}
    content = http.get(f"{http.base}/files/{file_id}/content")
    assert content.status_code == 200 and content.content == b'{"n": 1}\n'
    assert call_of(content).upstream == "azure"
    assert sites["azure"].log[-1]["path"] == f"/openai/files/{file_id}/content"


def test_the_v1_style(http, sites, settings):
    upstreams = dict(settings.OPENAI_DJANGO["UPSTREAMS"])
    upstreams["azure"] = {"kind": "azure", "base_url": sites["azure"].url + "/openai/v1",
                          "api_key": AZURE_KEY,
                          "models": [{"match": "gpt-4o", "rename": "gpt-4o-deployed"}]}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "UPSTREAMS": upstreams}
    response = http.post(f"{http.base}/chat/completions",
                         json={"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 200, response.text
    seen = sites["azure"].log[-1]
    assert seen["path"] == "/openai/v1/chat/completions" and seen["query"] == ""
    assert seen["model"] == "gpt-4o-deployed" and seen["api_key"]


def test_today_sdk_through_azure(sdk, sites):
    completion = sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert completion.choices[0].message.content
    chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="missing-x", messages=HELLO)
    assert caught.value.code == "DeploymentNotFound"
    assert {c.upstream for c in Call.objects.all()} == {"azure"}


LEGACY = """
import json, sys
import openai
openai.api_base, openai.api_key = sys.argv[1], sys.argv[2]
out = {}
r = openai.ChatCompletion.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
out["chat"] = r["choices"][0]["message"]["content"]
n = 0
for chunk in openai.ChatCompletion.create(model="gpt-4o", stream=True,
                                          messages=[{"role": "user", "content": "hi"}]):
    n += 1
out["chunks"] = n
try:
    openai.ChatCompletion.create(model="missing-x", messages=[{"role": "user", "content": "x"}])
except openai.error.InvalidRequestError as exc:
    out["error"] = [exc.http_status, exc.code]
print(json.dumps(out))
"""


def test_2023_sdk_through_azure_and_a_fallback(gateway, api_key, sites):
    python = sdk028_interpreter()
    sites["backend"].fault(path="/v1/chat/completions", kind="status", status=500, times=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    result = subprocess.run([python, "-c", LEGACY, gateway, api_key], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["chat"] and out["chunks"] > 2
    assert out["error"] == [404, "DeploymentNotFound"]
    first = Call.objects.order_by("created").first()
    assert first.upstream == "openai" and first.upstream_attempts[0]["status"] == 500
