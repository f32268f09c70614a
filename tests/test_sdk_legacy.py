"""The 2023 OpenAI Python SDK (0.28), run in its own virtualenv as a 2023 script would be,
works against the gateway for every operation it supports, streaming included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_django.models import Call

from .fixtures.gateway import ci_requires

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPT = Path(__file__).parent / "clients" / "sdk028_all.py"
EXPECTED_OPS = {
    "createCompletion", "createChatCompletion", "createEdit", "createImage", "createImageEdit",
    "createImageVariation", "createEmbedding", "createModeration", "createTranscription",
    "createTranslation", "createFile", "listFiles", "retrieveFile", "downloadFile",
    "createFineTune", "listFineTunes", "retrieveFineTune", "listFineTuneEvents",
    "cancelFineTune", "deleteFile", "listModels", "retrieveModel", "deleteModel",
    "listEngines", "retrieveEngine",
}


def sdk028_interpreter():
    candidates = [os.environ.get("SDK028_PYTHON"),
                  str(Path(__file__).resolve().parents[1] / ".venv-sdk028" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    ci_requires("the openai==0.28 virtualenv (.venv-sdk028)")


def test_every_operation_of_the_2023_sdk(gateway, api_key, upstream):
    python = sdk028_interpreter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    result = subprocess.run([python, str(SCRIPT), gateway, api_key], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failures = [r for r in reports if not r["ok"]]
    assert not failures, failures
    by_op = {r["op"]: r["detail"] for r in reports}
    assert "legacy" in by_op["createTranscription"]
    assert by_op["createChatCompletion-stream"]
    assert by_op["listFineTuneEvents-stream"] >= 1
    assert by_op["cancelFineTune"] == "cancelled"

    recorded = set(Call.objects.filter(status="succeeded").values_list("operation", flat=True))
    assert EXPECTED_OPS <= recorded, EXPECTED_OPS - recorded
    streams = Call.objects.filter(stream=True, status="succeeded")
    assert {c.operation for c in streams} == {"createCompletion", "createChatCompletion",
                                               "listFineTuneEvents"}
    # The organization header the old SDK sends is forwarded.
    assert all(r["headers"].get("openai-organization") == "org-legacy"
               for r in upstream.requests())
    assert sys.version_info >= (3, 8)
