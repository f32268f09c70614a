"""The servers and tools the suite relies on are really there and really work: each check talks
to the real thing (Redis, the S3 server through django-storages, Prism, Chromium, the 2023 SDK),
and the run is on the database and storage ``scripts/test`` says it is."""

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from django.core.files.base import ContentFile

from tests.fixtures.services import CHROMIUM_ARGS, REPO


def test_redis_answers_ping_and_keeps_a_value(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert client.ping() is True
        key = f"openai-django-smoke-{uuid.uuid4().hex}"
        client.set(key, b"\x00value", ex=60)
        assert client.get(key) == b"\x00value"
        client.delete(key)
    finally:
        client.close()


def test_s3_put_and_get_through_django_storages(s3_storage, s3_endpoint):
    data = os.urandom(4096)
    name = s3_storage.save("smoke/blob.bin", ContentFile(data))
    assert s3_storage.exists(name)
    assert s3_storage.size(name) == len(data)
    with s3_storage.open(name, "rb") as handle:
        assert handle.read() == data
    # The object really is in the bucket, under the test's own prefix.
    key = f"{s3_storage.location}/{name}"
    stored = s3_endpoint.client().get_object(Bucket=s3_endpoint.bucket, Key=key)
    assert stored["Body"].read() == data
    # A signed URL from the storage fetches the same bytes from the server.
    assert requests.get(s3_storage.url(name), timeout=10).content == data
    s3_storage.delete(name)
    assert not s3_storage.exists(name)


def test_prism_serves_the_spec_at_its_paths_without_v1(prism):
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer sk-prism-smoke"}
    answer = requests.post(f"{prism.url}/chat/completions", json=body, headers=headers,
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert {"id", "object", "created", "model", "choices"} <= set(answer.json())
    # The server URL's /v1 is not part of Prism's routes (see PrismServer's docstring).
    assert requests.post(f"{prism.url}/v1/chat/completions", json=body, headers=headers,
                         timeout=10).status_code == 404
    # Prism validates requests against the spec on its own: a body without "model" is refused.
    invalid = requests.post(f"{prism.url}/chat/completions", json={"messages": []},
                            headers=headers, timeout=10)
    assert invalid.status_code == 422
    assert "model" in invalid.text


def test_chromium_runs_a_page_headless(chromium_path, tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><body><script>document.body.dataset.ok = 6 * 7;</script></body></html>")
    result = subprocess.run(
        [chromium_path, "--headless", f"--user-data-dir={tmp_path / 'profile'}", *CHROMIUM_ARGS,
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-ok="42"' in result.stdout


def test_the_2023_sdk_is_installed_apart(sdk028_python):
    result = subprocess.run(
        [sdk028_python, "-c", "import openai; print(openai.version.VERSION, openai.api_base)"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.28.1", "https://api.openai.com/v1"]
    # and not in the suite's own venv, where today's SDK lives.
    import openai

    assert not openai.__version__.startswith("0.")


def test_services_env_names_every_service():
    output = subprocess.run([str(REPO / "scripts" / "services"), "env"], capture_output=True,
                            text=True, timeout=30, check=True).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in output.splitlines())
    assert exported["PG_DATABASE_URL"].startswith("postgres://")
    assert exported["REDIS_URL"].startswith("redis://127.0.0.1:")
    assert exported["S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert Path(exported["PRISM"]).name == "prism"
    assert Path(exported["SDK028_PYTHON"]).parent.parent.name == ".venv-sdk028"


@pytest.mark.django_db
def test_the_run_uses_the_database_and_storage_it_was_given():
    """``scripts/test`` runs the suite on SQLite + files, then on PostgreSQL + S3: check that
    each run really is on what its environment asks for."""
    from django.core.files.storage import storages
    from django.db import connection

    from openai_django.conf import app_settings

    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") \
        else "sqlite"
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)

    storage = storages[app_settings.STORAGE]
    expected_backend = "S3Storage" if os.environ.get("OPENAI_DJANGO_STORAGE") == "s3" \
        else "FileSystemStorage"
    assert type(storage).__name__ == expected_backend
    name = storage.save(f"smoke/{uuid.uuid4().hex}.txt", ContentFile(b"recorded"))
    try:
        with storage.open(name, "rb") as handle:
            assert handle.read() == b"recorded"
    finally:
        storage.delete(name)
