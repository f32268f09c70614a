"""System checks: each problem a site can configure gets an id and a hint, and a sound
configuration gets none."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from openai_django.checks import check_settings

ROOT = Path(__file__).resolve().parent.parent

SOUND = {
    "BASE_URL": "https://api.openai.com/v1",
    "API_KEY": "sk-upstream-0000",
    "RETENTION": {"bodies": 30, "artifacts": 30, "metadata": 365},
}
S3 = {
    "BACKEND": "storages.backends.s3.S3Storage",
    "OPTIONS": {"bucket_name": "b", "endpoint_url": "http://127.0.0.1:1",
                "access_key": "x", "secret_key": "y", "region_name": "us-east-1"},
}


def ids(settings, **overrides):
    settings.OPENAI_DJANGO = {**SOUND, **overrides}
    found = check_settings(None)
    for message in found:
        assert message.hint, message  # every message says what to do
    return sorted(m.id for m in found)


def test_a_sound_configuration_passes(settings):
    settings.DEBUG = False
    assert ids(settings) == []


def test_missing_upstream_key(settings):
    assert ids(settings, API_KEY=None) == ["openai_django.W002"]


def test_storage_alias_that_does_not_exist(settings):
    assert ids(settings, STORAGE="artifacts") == ["openai_django.E001"]
    settings.STORAGES = {**settings.STORAGES, "artifacts": S3}
    assert ids(settings, STORAGE="artifacts") == []


def test_plain_http_upstream_outside_debug(settings):
    settings.DEBUG = False
    assert ids(settings, BASE_URL="http://10.0.0.5:8000/v1") == ["openai_django.W003"]
    settings.DEBUG = True
    assert ids(settings, BASE_URL="http://10.0.0.5:8000/v1") == []


@pytest.mark.parametrize("retention, expected", [
    ({"bodies": None, "artifacts": None, "metadata": None}, ["openai_django.W005"]),
    ({}, ["openai_django.W005"]),
    ({"bodies": 30}, ["openai_django.W005"]),          # artifacts (uploads) kept forever
    ({"bodies": 30, "artifacts": 60}, []),              # metadata may be kept forever
])
def test_recording_bodies_without_retention(settings, retention, expected):
    assert ids(settings, RETENTION=retention) == expected
    # Not recording bodies at all needs no retention.
    assert ids(settings, RETENTION=retention, RECORD_BODIES=False) == []


@pytest.mark.parametrize("retention", [
    {"bodies": 0, "artifacts": 30},
    {"bodies": -1, "artifacts": 30},
    {"bodies": "30", "artifacts": 30},
    {"bodies": 30, "artifacts": 30, "prompts": 7},
    [30, 30, 365],
])
def test_bad_retention_values(settings, retention):
    assert "openai_django.E002" in ids(settings, RETENTION=retention)


def test_redact_hook_that_cannot_be_imported(settings):
    assert ids(settings, REDACT="openai_django.redaction.no_such_hook") == ["openai_django.E003"]
    assert ids(settings, REDACT="openai_django.redaction.EMAIL_MASK") == ["openai_django.E003"]
    assert ids(settings, REDACT="openai_django.redaction.redact_pii") == []


def test_artifact_urls(settings):
    assert ids(settings, ARTIFACT_URLS="public") == ["openai_django.E004"]
    # Signed URLs on local files cannot be: streamed instead, and said so.
    assert ids(settings, ARTIFACT_URLS="signed") == ["openai_django.W006"]
    settings.STORAGES = {**settings.STORAGES, "s3": S3}
    assert ids(settings, ARTIFACT_URLS="signed", STORAGE="s3") == []
    unsigned = {**S3, "OPTIONS": {**S3["OPTIONS"], "querystring_auth": False}}
    settings.STORAGES = {**settings.STORAGES, "s3": unsigned}
    assert ids(settings, ARTIFACT_URLS="signed", STORAGE="s3") == ["openai_django.W006"]


def test_postgres_without_persistent_connections():
    from openai_django.checks import _check_databases

    def check(**database):
        return [m.id for m in _check_databases({"reports": {
            "ENGINE": "django.db.backends.postgresql", "NAME": "x", **database}})]

    assert check(CONN_MAX_AGE=0) == ["openai_django.W007"]
    assert check(CONN_MAX_AGE=600) == []
    assert check(CONN_MAX_AGE=None) == []  # None = unlimited, not zero
    assert check(CONN_MAX_AGE=0, OPTIONS={"pool": True}) == []


def test_gzip_middleware(settings):
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    assert ids(settings) == ["openai_django.W004"]


def test_errors_stop_manage_py_check(settings):
    settings.OPENAI_DJANGO = {**SOUND, "STORAGE": "nowhere"}
    with pytest.raises(SystemCheckError, match=r"openai_django\.E001"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_the_demo_settings_pass_manage_py_check():
    """The demo decides on a retention, so only the missing key is left to warn about."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "project.settings",
             "OPENAI_API_KEY": "sk-demo-0000", "DJANGO_VAR_DIR": "/tmp"},
        timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "openai_django." not in result.stdout + result.stderr, result.stdout + result.stderr
