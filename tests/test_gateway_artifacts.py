"""Binary parts of calls are kept through the storage API, with size, type and sha256."""

import base64
import hashlib

import pytest

from openai_django.models import Artifact, Call

pytestmark = pytest.mark.django_db(transaction=True)


def png(seed=0, size=3000):
    """Bytes that start like a PNG (the stand-in does not decode uploads)."""
    return b"\x89PNG\r\n\x1a\n" + bytes((i * 7 + seed) % 256 for i in range(size))


def sha(data):
    return hashlib.sha256(data).hexdigest()


def call_of(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def test_generated_b64_image_is_decoded_to_a_file(http, upstream):
    response = http.post(f"{http.base}/images/generations", json={
        "prompt": "a lighthouse", "n": 2, "size": "256x256", "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    call = call_of(response)
    images = list(call.artifacts.filter(role=Artifact.Role.GENERATED_IMAGE).order_by("index"))
    assert len(images) == 2
    for item, artifact in zip(data, images):
        raw = base64.b64decode(item["b64_json"])
        assert raw.startswith(b"\x89PNG")
        assert artifact.sha256 == sha(raw) and artifact.bytes == len(raw)
        assert artifact.content_type == "image/png"
        with artifact.file.open("rb") as fh:
            assert fh.read() == raw


def test_url_images_are_fetched_from_allowed_hosts(http, upstream, settings):
    settings.OPENAI_DJANGO = {
        **settings.OPENAI_DJANGO, "IMAGE_URL_HOSTS": ["127.0.0.1"],
        "IMAGE_URL_ALLOW_PRIVATE": True, "IMAGE_URL_VERIFY": upstream.ca_file,
    }
    response = http.post(f"{http.base}/images/generations",
                         json={"prompt": "a fox", "response_format": "url"})
    url = response.json()["data"][0]["url"]
    assert url.startswith("https://127.0.0.1")
    artifact = call_of(response).artifacts.get(role=Artifact.Role.GENERATED_IMAGE)
    assert not artifact.error, artifact.error
    assert artifact.source_url == url and artifact.bytes > 0
    with artifact.file.open("rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("overrides, reason", [
    ({"IMAGE_URL_HOSTS": ["*.blob.core.windows.net"]}, "not in IMAGE_URL_HOSTS"),
    ({"IMAGE_URL_HOSTS": ["127.0.0.1"]}, "non-public address"),
    ({"IMAGE_URL_HOSTS": ["127.0.0.1"], "IMAGE_URL_ALLOW_PRIVATE": True,
      "IMAGE_URL_SCHEMES": ["http"]}, "scheme"),
])
def test_image_urls_outside_the_rules_are_not_fetched(http, upstream, settings, overrides,
                                                      reason):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "IMAGE_URL_VERIFY": upstream.ca_file,
                              **overrides}
    response = http.post(f"{http.base}/images/generations",
                         json={"prompt": "a fox", "response_format": "url"})
    assert response.status_code == 200
    artifact = call_of(response).artifacts.get(role=Artifact.Role.GENERATED_IMAGE)
    assert reason in artifact.error
    assert not artifact.file
    # The stand-in saw the generation but no image download.
    assert not any(r["path"].startswith("/images/") for r in upstream.requests())


def test_image_edit_keeps_image_and_mask(http, upstream):
    image, mask = png(1), png(2, 1500)
    response = http.post(f"{http.base}/images/edits",
                         data={"prompt": "add a hat", "n": "1", "response_format": "b64_json"},
                         files={"image": ("cat.png", image, "image/png"),
                                "mask": ("mask.png", mask, "image/png")})
    assert response.status_code == 200, response.text
    call = call_of(response)
    assert call.request_body == {"prompt": "add a hat", "n": "1", "response_format": "b64_json"}
    stored = {a.role: a for a in call.artifacts.all()}
    assert stored["image"].sha256 == sha(image) and stored["image"].name == "cat.png"
    assert stored["mask"].sha256 == sha(mask) and stored["mask"].field == "mask"
    assert "generated_image" in stored
    # The upstream received the very same bytes.
    files = {f["field"]: f for f in upstream.requests()[-1]["files"]}
    assert files["image"]["sha256"] == sha(image) and files["mask"]["sha256"] == sha(mask)
    assert files["image"]["filename"] == "cat.png"


def test_transcription_keeps_audio_and_transcript(http, upstream):
    audio = bytes(range(256)) * 400
    response = http.post(f"{http.base}/audio/transcriptions",
                         data={"model": "whisper-1", "response_format": "json"},
                         files={"file": ("talk.mp3", audio, "audio/mpeg")})
    assert response.status_code == 200, response.text
    text = response.json()["text"]
    call = call_of(response)
    audio_artifact = call.artifacts.get(role=Artifact.Role.AUDIO)
    assert audio_artifact.sha256 == sha(audio) and audio_artifact.content_type == "audio/mpeg"
    transcript = call.artifacts.get(role=Artifact.Role.TRANSCRIPT)
    with transcript.file.open("rb") as fh:
        assert fh.read().decode() == text
    assert call.output_text == text


def test_text_transcripts_are_recorded_as_text(http, upstream):
    response = http.post(f"{http.base}/audio/translations",
                         data={"model": "whisper-1", "response_format": "srt"},
                         files={"file": ("de.m4a", b"\x00" * 1000, "audio/mp4")})
    assert response.status_code == 200
    call = call_of(response)
    assert call.response_text == response.text and call.response_body is None
    assert call.artifacts.get(role=Artifact.Role.TRANSCRIPT).name.endswith(".srt")


def test_file_upload_and_download_are_kept(http, upstream):
    content = b'{"prompt": "x", "completion": "y"}\n' * 50
    upload = http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                       files={"file": ("data.jsonl", content)})
    assert upload.status_code == 200
    file_id = upload.json()["id"]
    assert call_of(upload).artifacts.get(role=Artifact.Role.UPLOAD).sha256 == sha(content)
    download = http.get(f"{http.base}/files/{file_id}/content")
    assert download.status_code == 200 and download.content == content
    artifact = call_of(download).artifacts.get(role=Artifact.Role.FILE_CONTENT)
    assert artifact.sha256 == sha(content)
    assert http.get(f"{http.base}/files/{file_id}").json()["bytes"] == len(content)
    assert http.delete(f"{http.base}/files/{file_id}").json()["deleted"] is True
    missing = http.get(f"{http.base}/files/{file_id}/content")
    assert missing.status_code == 404 and missing.json()["error"]


def test_large_responses_are_kept_exactly_and_compacted_in_the_row(http, upstream):
    inputs = [f"sentence number {i}" for i in range(64)]
    response = http.post(f"{http.base}/embeddings",
                         json={"model": "text-embedding-ada-002", "input": inputs})
    assert response.status_code == 200
    call = call_of(response)
    kept = call.artifacts.get(role=Artifact.Role.RESPONSE)
    assert kept.sha256 == sha(response.content)
    first = call.response_body["data"][0]["embedding"]
    assert first["dimensions"] == len(response.json()["data"][0]["embedding"])
    assert len(first["preview"]) == 8
    assert call.prompt_tokens


def test_deleting_a_call_deletes_its_files(http, upstream):
    response = http.post(f"{http.base}/files", data={"purpose": "fine-tune"},
                         files={"file": ("a.jsonl", b"{}\n")})
    call = call_of(response)
    artifact = call.artifacts.get()
    storage, name = artifact.file.storage, artifact.file.name
    assert storage.exists(name)
    call.delete()
    assert not storage.exists(name)
