"""Retention: bodies, artifact files and whole records are forgotten on time, separately, in
batches, by the management command and the Celery task, and nothing outlives its setting."""

import io
import json
from datetime import timedelta

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.utils import timezone

from openai_django import retention
from openai_django.models import Artifact, Call

pytestmark = pytest.mark.django_db(transaction=True)

DAY = timedelta(days=1)


def call_of(response):
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def set_retention(settings, **days):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "RETENTION": {"bodies": None, "artifacts": None,
                                            "metadata": None, **days}}


def age(call, days):
    """Backdate a call and its artifacts (as if it had been made ``days`` ago)."""
    when = timezone.now() - timedelta(days=days)
    Call.objects.filter(pk=call.pk).update(created=when)
    Artifact.objects.filter(call=call).update(created=when)


def make_calls(http):
    """A chat, a transcription (audio + transcript) and an image generation, for real."""
    chat = http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my secret plan"}]})
    audio = http.post(f"{http.base}/audio/transcriptions",
                      data={"model": "whisper-1", "response_format": "json"},
                      files={"file": ("talk.mp3", bytes(range(256)) * 20, "audio/mpeg")})
    image = http.post(f"{http.base}/images/generations",
                      json={"prompt": "a red fox", "response_format": "b64_json"})
    for response in (chat, audio, image):
        assert response.status_code == 200, response.text
    return call_of(chat), call_of(audio), call_of(image)


def stored(artifact):
    artifact.refresh_from_db()
    return bool(artifact.file) and artifact.file.storage.exists(artifact.file.name)


def test_bodies_are_purged_and_metadata_kept(http, upstream, settings):
    set_retention(settings, bodies=30, metadata=365)
    chat, audio, image = make_calls(http)
    fresh = call_of(http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "new question"}]}))
    for call in (chat, audio, image):
        age(call, 31)
    audio_file = audio.artifacts.get(role=Artifact.Role.AUDIO)
    transcript = audio.artifacts.get(role=Artifact.Role.TRANSCRIPT)
    transcript_name = transcript.file.name

    report = retention.purge()

    assert report.bodies == 3 and report.metadata == 0 and not report.errors
    for call in (chat, audio, image):
        call.refresh_from_db()
        assert call.body_purged_at is not None
        assert call.request_body is None and call.response_body is None
        assert call.prompt_preview == "" and call.output_text == ""
        # Metadata outlives the bodies.
        assert call.status == Call.Status.SUCCEEDED and call.response_status == 200
        assert call.operation and call.latency_ms is not None
    chat.refresh_from_db()
    assert chat.total_tokens and chat.model == "gpt-4o-mini"
    # A transcript is a copy of the answer: it goes with the bodies; the audio is an artifact
    # (its own retention, unset here) and stays.
    assert not stored(transcript) and transcript.purged_at is not None
    assert not transcript.file.storage.exists(transcript_name)
    assert stored(audio_file) and audio_file.purged_at is None
    fresh.refresh_from_db()
    assert fresh.body_purged_at is None and fresh.request_body["messages"]

    # The REST log says so, and the recorded response is no longer served.
    detail = http.get(f"{http.base}/calls/{chat.pk}").json()
    assert detail["body_purged_at"] and detail["request"] is None
    missing = http.get(f"{http.base}/calls/{chat.pk}/response")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "body_not_kept"
    listed = {a["role"]: a for a in http.get(f"{http.base}/calls/{audio.pk}").json()["artifacts"]}
    assert listed["transcript"]["url"] is None and listed["transcript"]["purged"] is True
    assert http.get(listed["audio"]["url"]).status_code == 200

    # A second run finds nothing left to do.
    again = retention.purge()
    assert (again.bodies, again.artifacts, again.metadata) == (0, 0, 0)


def test_artifact_files_are_purged_and_their_rows_kept(http, upstream, settings):
    set_retention(settings, artifacts=7)
    _, audio, image = make_calls(http)
    for call in (audio, image):
        age(call, 8)
    artifacts = list(Artifact.objects.filter(call__in=[audio, image]).exclude(file=""))
    assert len(artifacts) >= 3
    urls = [a["url"] for a in http.get(f"{http.base}/calls/{image.pk}").json()["artifacts"]]

    report = retention.purge()

    assert report.artifacts == len(artifacts) and report.bodies == 0
    for artifact in artifacts:
        name = artifact.file.name
        artifact.refresh_from_db()
        assert artifact.purged_at is not None and not artifact.file
        assert not artifact.file.storage.exists(name)
        assert artifact.sha256 and artifact.bytes  # what it was is still known
    for url in urls:
        assert http.get(url).status_code == 404
    audio.refresh_from_db()
    assert audio.body_purged_at is None and audio.output_text  # bodies have their own setting


def test_metadata_purge_deletes_rows_and_files(http, upstream, settings):
    set_retention(settings, bodies=30, artifacts=30, metadata=90)
    chat, audio, image = make_calls(http)
    for call in (chat, audio):
        age(call, 91)
    names = [a.file.name for a in Artifact.objects.filter(call=audio)]
    storage = Artifact._meta.get_field("file").storage

    report = retention.purge()

    assert report.metadata == 2
    assert not Call.objects.filter(pk__in=[chat.pk, audio.pk]).exists()
    assert not Artifact.objects.filter(call_id=audio.pk).exists()
    assert names and not any(storage.exists(name) for name in names)
    assert Call.objects.filter(pk=image.pk).exists()
    assert http.get(f"{http.base}/calls/{chat.pk}").status_code == 404


def test_dry_run_counts_and_changes_nothing(http, upstream, settings):
    set_retention(settings, bodies=1, artifacts=1, metadata=10)
    chat, audio, image = make_calls(http)
    age(chat, 11)
    age(audio, 2)
    age(image, 2)
    before = list(Call.objects.order_by("pk").values())

    report = retention.purge(dry_run=True)

    assert report.dry_run and report.metadata == 1 and report.bodies == 2
    # audio + transcript + generated image files (the transcript counted once).
    assert report.artifacts == Artifact.objects.filter(
        call__in=[audio, image]).exclude(file="").count()
    assert list(Call.objects.order_by("pk").values()) == before
    assert Artifact.objects.filter(purged_at__isnull=False).count() == 0


def test_batches_cover_everything(http, upstream, settings):
    set_retention(settings, bodies=1)
    calls = [call_of(http.post(f"{http.base}/embeddings", json={
        "model": "text-embedding-3-small", "input": f"text {i}"})) for i in range(7)]
    for call in calls:
        age(call, 2)
    report = retention.purge(batch_size=3)
    assert report.bodies == 7
    assert not Call.objects.filter(body_purged_at__isnull=True).exists()


class RefusingStorage(FileSystemStorage):
    """A storage whose deletes fail, as S3 does when it is down or the policy denies it (a
    stand-in for an outage we cannot cause on the local filesystem)."""

    refuse = True

    def delete(self, name):
        if RefusingStorage.refuse:
            raise OSError("storage unavailable")
        return super().delete(name)


def test_a_storage_failure_leaves_rows_to_retry(http, upstream, settings, media_root):
    settings.STORAGES = {**settings.STORAGES, "refusing": {
        "BACKEND": "tests.test_retention.RefusingStorage",
        "OPTIONS": {"location": str(media_root)}}}
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "STORAGE": "refusing",
                              "RETENTION": {"artifacts": 1}}
    _, audio, _ = make_calls(http)
    age(audio, 2)
    RefusingStorage.refuse = True
    try:
        report = retention.purge()
        assert report.errors and report.artifacts == 0
        assert not Artifact.objects.filter(purged_at__isnull=False).exists()
        out, err = io.StringIO(), io.StringIO()
        with pytest.raises(SystemExit) as exit_info:
            call_command("openai_purge", stdout=out, stderr=err)
        assert exit_info.value.code == 1 and "storage unavailable" in out.getvalue()
    finally:
        RefusingStorage.refuse = False
    report = retention.purge()
    assert not report.errors and report.artifacts == 2  # the audio and its transcript
    assert not any(stored(a) for a in Artifact.objects.filter(call=audio))


def test_management_command(http, upstream, settings):
    set_retention(settings, bodies=3)
    chat, _, _ = make_calls(http)
    age(chat, 4)
    out = io.StringIO()
    call_command("openai_purge", "--dry-run", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["dry_run"] is True and data["bodies"] == 1
    assert data["cutoffs"]["metadata"] is None
    chat.refresh_from_db()
    assert chat.body_purged_at is None
    out = io.StringIO()
    call_command("openai_purge", stdout=out)
    assert "purged: bodies of 1 calls" in out.getvalue()
    chat.refresh_from_db()
    assert chat.body_purged_at is not None and chat.request_body is None


def test_celery_task_is_registered_and_purges(http, upstream, settings):
    from project.celery import app

    set_retention(settings, bodies=3)
    assert retention.purge_expired_task.name in app.tasks
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert any(entry["task"] == retention.purge_expired_task.name
               for entry in schedule.values())
    chat, _, _ = make_calls(http)
    age(chat, 4)
    # Run in this process: the task body is exactly `purge()`; the worker wiring is the same
    # as for every task of the app (tested with a real worker in the task tests).
    result = retention.purge_expired_task.apply().get()
    assert result["bodies"] == 1
    chat.refresh_from_db()
    assert chat.body_purged_at is not None


def test_the_admin_shows_when_a_body_was_purged(http, upstream, settings, admin_client):
    from django.urls import reverse

    set_retention(settings, bodies=30)
    chat, _, _ = make_calls(http)
    url = reverse("admin:openai_django_call_change", args=[chat.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and "Body purged" not in page.content.decode()
    age(chat, 31)
    retention.purge()
    page = admin_client.get(url).content.decode()
    assert "Body purged on" in page
    assert "my secret plan" not in page
