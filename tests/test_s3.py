"""Artifacts in S3: django-storages' S3 backend on the app's storage alias, against a real
S3-compatible server on loopback (moto_server), with real calls through the gateway."""

import base64
import hashlib
import os
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from openai_django import retention
from openai_django.models import Artifact, Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.s3]

class Bucket:
    def __init__(self, endpoint, name):
        self.name = name
        self.client = endpoint.client()

    def keys(self):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def read(self, key):
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def empty(self):
        for key in self.keys():
            self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def s3(s3_endpoint, settings, upstream):
    """A fresh private bucket of its own (on the S3 server of tests/fixtures/services.py)
    behind the app's storage alias, so that the test sees exactly the objects it made."""
    bucket = Bucket(s3_endpoint, f"od-test-{uuid.uuid4().hex[:12]}")
    bucket.client.create_bucket(Bucket=bucket.name)
    settings.STORAGES = {**settings.STORAGES, "openai_django_s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": bucket.name, "endpoint_url": s3_endpoint.url,
                    "region_name": s3_endpoint.region, "access_key": s3_endpoint.access_key,
                    "secret_key": s3_endpoint.secret_key, "file_overwrite": False,
                    "default_acl": None, "querystring_auth": True,
                    "addressing_style": "path"},
    }}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STORAGE": "openai_django_s3"}
    yield bucket
    bucket.empty()
    bucket.client.delete_bucket(Bucket=bucket.name)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def call_of(response):
    assert response.status_code == 200, response.text
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def artifact_urls(http, call):
    detail = http.get(f"{http.base}/calls/{call.pk}").json()
    return {(a["role"], a["index"], a["name"]): a["url"] for a in detail["artifacts"]}


def test_uploads_go_to_the_bucket_under_names_that_never_collide(http, s3, media_root):
    first = b'{"prompt": "a", "completion": "b"}\n' * 40
    second = b'{"prompt": "c", "completion": "d"}\n' * 60
    calls = [call_of(http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                               files={"file": ("train.jsonl", content)}))
             for content in (first, second)]
    artifacts = [c.artifacts.get(role=Artifact.Role.UPLOAD) for c in calls]
    keys = s3.keys()
    assert [a.file.name for a in artifacts] == [k for k in keys if k.endswith("train.jsonl")]
    assert len(set(keys)) == 2  # same file name twice: two objects, neither overwritten
    for call, artifact, content in zip(calls, artifacts, (first, second)):
        assert artifact.file.name.startswith("openai_django/")
        assert str(call.pk) in artifact.file.name and artifact.id.hex in artifact.file.name
        assert s3.read(artifact.file.name) == content and artifact.sha256 == sha(content)
    # Nothing went to the local media folder.
    assert not media_root.exists() or not any(p.is_file() for p in media_root.rglob("*"))


def test_generated_images_audio_and_file_contents_are_stored_and_served(http, s3):
    image = call_of(http.post(f"{http.base}/images/generations", json={
        "prompt": "a lighthouse", "n": 2, "response_format": "b64_json"}))
    audio_bytes = bytes(range(256)) * 64
    audio = call_of(http.post(f"{http.base}/audio/transcriptions",
                              data={"model": "whisper-1"},
                              files={"file": ("talk.mp3", audio_bytes, "audio/mpeg")}))
    content = b"line one\nline two\n" * 100
    file_id = http.post(f"{http.base}/files", data={"purpose": "assistants"},
                        files={"file": ("notes.txt", content)}).json()["id"]
    download = call_of(http.get(f"{http.base}/files/{file_id}/content"))

    roles = {}
    for call in (image, audio, download):
        for artifact in call.artifacts.exclude(file=""):
            roles.setdefault(artifact.role, []).append(artifact)
            assert s3.read(artifact.file.name) is not None
    assert len(roles[Artifact.Role.GENERATED_IMAGE]) == 2
    assert {Artifact.Role.AUDIO, Artifact.Role.TRANSCRIPT, Artifact.Role.FILE_CONTENT} <= set(roles)
    keys = s3.keys()
    assert all(a.file.name in keys for group in roles.values() for a in group)

    # Served back through /v1/calls/<id>/artifacts/<aid>, byte for byte.
    png = base64.b64decode(image.response_body["data"][0]["b64_json"]) \
        if not str(image.response_body["data"][0]["b64_json"]).startswith("<") else None
    generated = roles[Artifact.Role.GENERATED_IMAGE][0]
    served = http.get(artifact_urls(http, image)[("generated_image", 0, "image-0.png")])
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["Content-Length"] == str(generated.bytes)
    assert "private" in served.headers["Cache-Control"]
    assert sha(served.content) == generated.sha256
    if png is not None:
        assert served.content == png
    audio_url = artifact_urls(http, audio)[("audio", 0, "talk.mp3")]
    assert http.get(audio_url).content == audio_bytes
    file_url = next(u for (role, _, _), u in artifact_urls(http, download).items()
                    if role == "file_content")
    fetched = http.get(file_url)
    assert fetched.content == content and "attachment" in fetched.headers["Content-Disposition"]
    # The recorded response of the download is served from the bucket too.
    assert http.get(f"{http.base}/calls/{download.pk}/response").content == content


def test_only_the_owner_gets_an_artifact(http, s3, other_api_key):
    call = call_of(http.post(f"{http.base}/images/generations",
                             json={"prompt": "a fox", "response_format": "b64_json"}))
    url = artifact_urls(http, call)[("generated_image", 0, "image-0.png")]
    assert http.get(url).status_code == 200
    stranger = requests.get(url, headers={"Authorization": f"Bearer {other_api_key}"})
    assert stranger.status_code == 404 and stranger.json()["error"]
    nobody = requests.get(url)
    assert nobody.status_code == 401
    # The bucket itself is private: no anonymous read of the object.
    key = call.artifacts.get(role=Artifact.Role.GENERATED_IMAGE).file.name
    endpoint = s3.client.meta.endpoint_url
    assert requests.get(f"{endpoint}/{s3.name}/{key}").status_code == 403


def test_signed_urls_redirect_the_owner_only(http, s3, settings, other_api_key):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "ARTIFACT_URLS": "signed",
                              "ARTIFACT_URL_EXPIRES": 120}
    audio_bytes = b"ID3" + bytes(range(256)) * 40
    call = call_of(http.post(f"{http.base}/audio/transcriptions", data={"model": "whisper-1"},
                             files={"file": ("memo.mp3", audio_bytes, "audio/mpeg")}))
    url = artifact_urls(http, call)[("audio", 0, "memo.mp3")]
    redirect = http.get(url, allow_redirects=False)
    assert redirect.status_code == 302
    signed = redirect.headers["Location"]
    query = parse_qs(urlsplit(signed).query)
    assert "X-Amz-Signature" in query or "Signature" in query
    assert query.get("X-Amz-Expires", query.get("Expires"))
    # Following it (with no credentials of ours: the URL alone grants access) gets the bytes,
    # with the name and type the app recorded.
    fetched = requests.get(signed)
    assert fetched.status_code == 200 and fetched.content == audio_bytes
    assert "memo.mp3" in fetched.headers["Content-Disposition"]
    assert fetched.headers["Content-Type"] == "audio/mpeg"
    # A tampered URL is refused by the storage.
    assert requests.get(signed.replace(call.artifacts.get(role="audio").id.hex,
                                       uuid.uuid4().hex)).status_code in (403, 404)
    # Another user never sees a signed URL.
    stranger = requests.get(url, headers={"Authorization": f"Bearer {other_api_key}"},
                            allow_redirects=False)
    assert stranger.status_code == 404


def test_deleting_a_call_deletes_its_objects(http, s3):
    keep = call_of(http.post(f"{http.base}/images/generations",
                             json={"prompt": "keep me", "response_format": "b64_json"}))
    gone = call_of(http.post(f"{http.base}/images/edits",
                             data={"prompt": "a hat", "response_format": "b64_json"},
                             files={"image": ("cat.png", b"\x89PNG\r\n\x1a\n" + b"1" * 900,
                                              "image/png")}))
    gone_keys = [a.file.name for a in gone.artifacts.exclude(file="")]
    assert len(gone_keys) == 2 and set(gone_keys) <= set(s3.keys())
    gone.delete()
    remaining = s3.keys()
    assert not set(gone_keys) & set(remaining)
    assert [a.file.name for a in keep.artifacts.all()] == remaining


def test_retention_deletes_objects_from_the_bucket(http, s3, settings):
    from django.utils import timezone

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "RETENTION": {"bodies": 30, "artifacts": 7, "metadata": 90}}
    old = call_of(http.post(f"{http.base}/audio/transcriptions", data={"model": "whisper-1"},
                            files={"file": ("old.mp3", b"\0" * 3000, "audio/mpeg")}))
    new = call_of(http.post(f"{http.base}/audio/transcriptions", data={"model": "whisper-1"},
                            files={"file": ("new.mp3", b"\1" * 3000, "audio/mpeg")}))
    old_keys = [a.file.name for a in old.artifacts.all()]
    Artifact.objects.filter(call=old).update(created=timezone.now() - timezone.timedelta(days=8))
    report = retention.purge()
    assert report.artifacts == 2 and not report.errors
    assert not set(old_keys) & set(s3.keys())
    assert sorted(a.file.name for a in new.artifacts.all()) == s3.keys()
    assert old.artifacts.filter(purged_at__isnull=False).count() == 2


def test_large_files_are_streamed_from_the_bucket(http, s3):
    """Served as they are read from S3 (django-storages' S3File would first download the whole
    object into memory, per request)."""
    from openai_django.storage import open_artifact

    content = os.urandom(3 * 1024 * 1024)
    call = call_of(http.post(f"{http.base}/files", data={"purpose": "assistants"},
                             files={"file": ("big.bin", content)}))
    artifact = call.artifacts.get(role=Artifact.Role.UPLOAD)
    handle = open_artifact(artifact)
    try:
        from botocore.response import StreamingBody

        assert isinstance(handle, StreamingBody) and not handle.seekable()
        assert handle.read(16) == content[:16]
    finally:
        handle.close()
    url = artifact_urls(http, call)[("upload", 0, "big.bin")]
    with http.get(url, stream=True) as served:
        assert served.headers["Content-Length"] == str(len(content))
        received = b"".join(served.iter_content(65536))
    assert received == content
