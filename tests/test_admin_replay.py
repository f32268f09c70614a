"""Replay from the admin (one call, edited, in bulk against another model) and the comparison
pages. Calls are real (SDK -> live gateway -> stand-in); Celery runs eagerly here, so a replay
is performed by the same task code a worker runs (the browser test uses a real worker)."""

import base64
import json
import re

import pytest
from django.test import Client

from openai_django.models import Artifact, Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

LIST = "/admin/openai_django/call/"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQ"
                       "GAhKmMIQAAAABJRU5ErkJggg==")


def chat(sdk, content="Tell me about otters", model="gpt-4o-mini", **extra):
    response = sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **extra)
    return Call.objects.get(pk=response.headers["X-Call-Id"])


def test_replay_confirms_then_queues_a_linked_call(replayer_client, replayer, sdk, upstream,
                                                   eager_celery):
    original = chat(sdk)
    confirm = replayer_client.get(f"{LIST}{original.pk}/replay/")
    assert confirm.status_code == 200
    assert "Yes, replay it" in confirm.content.decode()
    assert not original.replays.exists()  # GET never replays

    response = replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": ""}, follow=True)
    replay = original.replays.get()
    assert response.redirect_chain[-1][0] == f"{LIST}{replay.pk}/change/"
    assert "queued" in response.content.decode()
    replay.refresh_from_db()
    assert replay.status == Call.Status.SUCCEEDED
    assert replay.source == Call.Source.REPLAY and replay.mode == Call.Mode.ASYNC
    assert replay.user == replayer and replay.api_key is None
    assert replay.request_body == original.request_body
    sent = upstream.requests()[-1]
    assert sent["body"] == original.request_body


def test_replay_against_another_model(replayer_client, sdk, upstream, eager_celery):
    original = chat(sdk)
    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": "gpt-4o"})
    replay = original.replays.get()
    assert replay.model == "gpt-4o"
    assert upstream.requests()[-1]["body"]["model"] == "gpt-4o"
    assert replay.request_body["messages"] == original.request_body["messages"]


def test_replay_needs_the_permission_and_csrf(viewer_client, viewer, replayer, sdk,
                                              eager_celery):
    original = chat(sdk)
    assert viewer_client.get(f"{LIST}{original.pk}/replay/").status_code == 403
    assert viewer_client.post(f"{LIST}{original.pk}/replay/").status_code == 403
    assert viewer_client.post(f"{LIST}{original.pk}/replay/edit/").status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(replayer)
    assert strict.post(f"{LIST}{original.pk}/replay/").status_code == 403  # no CSRF token
    page = strict.get(f"{LIST}{original.pk}/replay/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    assert strict.post(f"{LIST}{original.pk}/replay/",
                       {"csrfmiddlewaretoken": token}).status_code == 302
    assert original.replays.count() == 1


def test_calls_without_bodies_cannot_be_replayed(replayer_client, sdk, eager_celery):
    original = chat(sdk)
    Call.objects.filter(pk=original.pk).update(metadata_only=True, request_body=None)
    text = replayer_client.get(f"{LIST}{original.pk}/replay/").content.decode()
    assert "cannot be replayed" in text
    replayer_client.post(f"{LIST}{original.pk}/replay/")
    assert not original.replays.exists()


def test_edit_and_replay_changes_any_parameter(replayer_client, sdk, upstream, eager_celery):
    original = chat(sdk, temperature=0.2)
    form = replayer_client.get(f"{LIST}{original.pk}/replay/edit/").content.decode()
    assert "&quot;temperature&quot;: 0.2" in form  # the original request, in the form
    body = dict(original.request_body, temperature=1.5, max_tokens=7)
    body.pop("temperature")  # removing a parameter works too
    response = replayer_client.post(f"{LIST}{original.pk}/replay/edit/", {
        "model": "gpt-4o", "body": json.dumps(body)})
    assert response.status_code == 302
    replay = original.replays.get()
    assert replay.request_body == {**body, "model": "gpt-4o"}
    assert "temperature" not in upstream.requests()[-1]["body"]
    assert upstream.requests()[-1]["body"]["max_tokens"] == 7


def test_edit_and_replay_reports_bad_input(replayer_client, sdk, eager_celery):
    original = chat(sdk)
    bad_json = replayer_client.post(f"{LIST}{original.pk}/replay/edit/", {"body": "{nope"})
    assert "This is not valid JSON" in bad_json.content.decode()
    invalid = replayer_client.post(f"{LIST}{original.pk}/replay/edit/", {
        "body": json.dumps({**original.request_body, "temperature": "hot"})})
    assert invalid.status_code == 200 and "temperature" in invalid.content.decode()
    assert "errorlist" in invalid.content.decode()
    assert not original.replays.exists()


def test_edit_and_replay_reattaches_the_original_files(replayer_client, sdk, upstream,
                                                       eager_celery):
    sdk.images.edit(image=("in.png", PNG, "image/png"), prompt="make it blue", n=1,
                    response_format="b64_json")
    original = Call.objects.get(operation="createImageEdit")
    form = replayer_client.get(f"{LIST}{original.pk}/replay/edit/").content.decode()
    assert "re-attached from storage" in form and "in.png" in form
    body = dict(original.request_body, prompt="make it green")
    response = replayer_client.post(f"{LIST}{original.pk}/replay/edit/",
                                    {"body": json.dumps(body)})
    assert response.status_code == 302, response.content.decode()[:2000]
    replay = original.replays.get()
    assert replay.status == Call.Status.SUCCEEDED, replay.error
    source = original.artifacts.get(role=Artifact.Role.IMAGE)
    again = replay.artifacts.get(role=Artifact.Role.IMAGE)
    assert again.sha256 == source.sha256 and again.name == "in.png"
    assert replay.artifacts.filter(role=Artifact.Role.GENERATED_IMAGE).count() == 1
    sent = upstream.requests()[-1]
    assert sent["form"]["prompt"] == "make it green"
    assert [f["filename"] for f in sent["files"]] == ["in.png"]


def test_bulk_replay_against_another_model(replayer_client, sdk, upstream, eager_celery):
    originals = [chat(sdk, f"question {i}") for i in range(3)]
    sdk.models.list()  # takes no model: skipped when a model is forced
    listing = Call.objects.get(operation="listModels")
    selected = [str(c.pk) for c in originals] + [str(listing.pk)]
    confirm = replayer_client.post(LIST, {"action": "replay_selected", "index": 0,
                                          "_selected_action": selected})
    text = confirm.content.decode()
    assert confirm.status_code == 200 and "Replay 4 calls?" in text
    assert not Call.objects.filter(replay_of__isnull=False).exists()

    done = replayer_client.post(LIST, {"action": "replay_selected", "post": "yes",
                                       "model": "gpt-4o", "_selected_action": selected},
                                follow=True)
    text = done.content.decode()
    assert "3 replays queued against gpt-4o" in text
    assert "1 call was not replayed" in text
    replays = Call.objects.filter(replay_of__isnull=False)
    assert {r.replay_of_id for r in replays} == {c.pk for c in originals}
    assert all(r.model == "gpt-4o" and r.status == Call.Status.SUCCEEDED for r in replays)
    # The message links to the batch in the list and to its comparison.
    report = re.search(r'href="(/admin/openai_django/call/compare/\?batch=[^"]+)"', text)[1]
    page = replayer_client.get(report.replace("&amp;", "&")).content.decode()
    assert "gpt-4o-mini" in page and "gpt-4o" in page
    assert page.count('/compare/">compare</a>') == 3
    batch_list = re.search(r'href="(/admin/openai_django/call/\?batch=[^"]+)"', text)[1]
    assert len(set(re.findall(r"call/([0-9a-f-]{36})/change/",
                              replayer_client.get(batch_list).content.decode()))) == 3


def test_bulk_replay_across_all_pages_is_capped(replayer_client, sdk, eager_celery):
    from openai_django.admin.calls import CallAdmin

    calls = [chat(sdk, f"q{i}") for i in range(3)]
    before, CallAdmin.bulk_replay_max = CallAdmin.bulk_replay_max, 2
    try:
        response = replayer_client.post(LIST, {"action": "replay_selected", "index": 0,
                                               "select_across": 1,
                                               "_selected_action": [str(calls[0].pk)]},
                                        follow=True)
    finally:
        CallAdmin.bulk_replay_max = before
    assert "Select at most 2 calls" in response.content.decode()
    assert not Call.objects.filter(replay_of__isnull=False).exists()


def test_compare_a_replay_with_its_original(replayer_client, sdk, eager_celery):
    original = chat(sdk, "compare these words")
    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": "gpt-4o"})
    replay = original.replays.get()
    page = replayer_client.get(f"{LIST}{replay.pk}/compare/")
    text = page.content.decode()
    assert page.status_code == 200
    assert "Original" in text and "Replay" in text and "% alike" in text
    assert "<del>" in text or "<ins>" in text or "100% alike" in text
    assert "gpt-4o-mini" in text and "gpt-4o" in text
    assert "What the requests differ in" in text
    for value in (original.total_tokens, replay.total_tokens):
        assert f"<td>{value}</td>" in text
    # From the original, the comparison opens on its latest replay.
    assert replayer_client.get(f"{LIST}{original.pk}/compare/").status_code == 200
    # Any two calls: ?with=
    other = chat(sdk, "something else")
    assert "B" in replayer_client.get(f"{LIST}{other.pk}/compare/?with={original.pk}").content \
        .decode()


def test_compare_images_side_by_side(replayer_client, sdk, eager_celery):
    sdk.images.generate(prompt="a boat", n=1, size="256x256", response_format="b64_json")
    original = Call.objects.get(operation="createImage")
    replayer_client.post(f"{LIST}{original.pk}/replay/")
    replay = original.replays.get()
    text = replayer_client.get(f"{LIST}{replay.pk}/compare/").content.decode()
    for call in (original, replay):
        image = call.artifacts.get(role=Artifact.Role.GENERATED_IMAGE)
        assert f"{LIST}{call.pk}/artifacts/{image.pk}/?inline=1" in text


def test_diff_escapes_text(replayer_client, sdk, eager_celery):
    original = chat(sdk, "<img src=x onerror=alert(1)>")
    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": "gpt-4o"})
    text = replayer_client.get(f"{LIST}{original.replays.get().pk}/compare/").content.decode()
    assert "<img src=x onerror" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_a_replay_keeps_the_attached_object_but_not_the_key_or_callback(
        replayer_client, replayer, sdk, upstream, eager_celery, user):
    original = chat(sdk)
    original.target = user  # any model instance of the site: here, the caller's own user
    original.callback = "tests.nowhere.done"
    original.save(update_fields=["target_type", "target_id", "callback"])
    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": ""})
    replay = original.replays.get()
    assert replay.target == user
    assert list(Call.objects.for_object(user).order_by("created")) == [original, replay]
    assert replay.api_key is None and replay.callback == ""
