"""The admin in a real browser: Debian's Chromium driven by Playwright, against the live site,
the stand-in upstream and a real Celery worker with a real broker.

An admin logs in, opens a chat call and reads the conversation (with the image the user sent
as a thumbnail), opens an image call and sees the generated images as thumbnails, replays the
chat call against another model from the confirmation page, waits for the worker to finish it
and opens the comparison. Screenshots of the main pages are kept under
``test-artifacts/screenshots/``.
"""

import base64
import re

import pytest

from openai_django.models import APIKey, Call

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("clean_cache")]



def make_png(width=96, height=64):
    """A small gradient PNG (written by hand: no imaging library needed)."""
    import struct
    import zlib

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width)
                        for v in (x * 255 // width, y * 255 // height, 160))
        for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# Sent inside a chat message as a data URL.
PNG = make_png()


def login(page, live_server, username="admin", password="password"):
    page.goto(f"{live_server.url}/admin/login/?next=/admin/openai_django/call/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r".*/admin/openai_django/call/$"))


def shot(page, folder, name):
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_read_replay_and_compare_in_a_browser(page, live_server, admin_user, sdk, upstream,
                                              celery_worker_factory, screenshots_dir):
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    chat = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "You answer about pictures."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture? <script>alert(1)</script>"},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]},
    ])
    chat_id = chat.headers["X-Call-Id"]
    image = sdk.images.with_raw_response.generate(prompt="a lighthouse at dawn", n=2,
                                                  size="256x256", response_format="b64_json")
    image_id = image.headers["X-Call-Id"]
    worker = celery_worker_factory()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    login(page, live_server)
    assert page.locator("#result_list tbody tr").count() == 2
    shot(page, screenshots_dir, "01-call-list")

    page.click(f"#result_list a[href*='{chat_id}']")
    conversation = page.locator(".od-conversation")
    conversation.wait_for()
    assert conversation.locator(".od-message-system").inner_text().lower().count("pictures")
    user_message = conversation.locator(".od-message-user")
    assert "<script>alert(1)</script>" in user_message.inner_text()
    thumb = user_message.locator("img")
    assert thumb.count() == 1
    assert thumb.evaluate("img => img.complete && img.naturalWidth") == 96
    assert conversation.locator(".od-message-assistant").count() == 1
    shot(page, screenshots_dir, "02-chat-call")

    page.goto(f"{live_server.url}/admin/openai_django/call/{image_id}/change/")
    generated = page.locator(".od-generated img")
    assert generated.count() == 2
    for index in range(2):
        # Wait for each image (off-screen ones load late under load), then check it decoded.
        handle = generated.nth(index).element_handle()
        handle.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle,
                               timeout=15000)
    full = page.locator(".od-generated a").first.get_attribute("href")
    assert "/artifacts/" in full and full.endswith("?inline=1")
    shot(page, screenshots_dir, "03-image-call")

    page.goto(f"{live_server.url}/admin/openai_django/call/{chat_id}/change/")
    page.click("text=Replay…")
    page.wait_for_url(re.compile(r".*/replay/$"))
    page.fill("#id_model", "gpt-4o")
    shot(page, screenshots_dir, "04-replay-confirm")
    page.click("input[type=submit][value='Yes, replay it']")
    page.wait_for_url(re.compile(r".*/admin/openai_django/call/[0-9a-f-]+/change/$"))
    assert "queued" in page.locator(".messagelist").inner_text()
    replay = Call.objects.get(replay_of_id=chat_id)
    assert replay.model == "gpt-4o" and replay.source == Call.Source.REPLAY
    # The worker performs it; the page reloads itself until the call is finished.
    page.wait_for_selector(".od-status-ok", timeout=60_000)
    replay.refresh_from_db()
    assert replay.status == Call.Status.SUCCEEDED, worker.log()
    assert page.locator(".od-conversation .od-message-assistant").count() == 1

    page.click("text=Compare with original")
    page.wait_for_url(re.compile(r".*/compare/$"))
    metrics = page.locator(".od-metrics").inner_text()
    assert "gpt-4o-mini" in metrics and "gpt-4o" in metrics
    assert "model" in page.locator(".od-changes").inner_text()
    assert page.locator(".od-diff").inner_text().strip()
    shot(page, screenshots_dir, "05-compare")
    assert dialogs == []  # no script from the stored prompt ever ran


def test_screenshots_of_the_main_pages(page, live_server, admin_user, sdk, upstream,
                                       eager_celery, screenshots_dir):
    """Every kind of call page, the usage dashboard, the bulk replay and keys, as pictures."""
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "What's the weather in Paris?"}],
        tools=[{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    list(sdk.chat.completions.create(model="gpt-4o", stream=True, messages=[
        {"role": "user", "content": "Stream a haiku about logs"}]))
    sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    sdk.embeddings.create(model="text-embedding-3-small", input="The food was delicious")
    sdk.audio.transcriptions.create(model="whisper-1", response_format="verbose_json",
                                    file=("talk.mp3", b"ID3" + bytes(2000), "audio/mpeg"))
    sdk.moderations.create(input="I will hurt you")
    upload = sdk.files.create(file=("train.jsonl", b'{"prompt": "a", "completion": "b"}\n'),
                              purpose="fine-tune")
    sdk.files.list()
    sdk.fine_tunes.create(training_file=upload.id) if hasattr(sdk, "fine_tunes") else None
    sdk.models.list()
    key, _raw = APIKey.generate(admin_user, name="reporting script")

    login(page, live_server)
    shot(page, screenshots_dir, "10-list-all-kinds")
    for number, call in enumerate(Call.objects.order_by("created"), start=1):
        page.goto(f"{live_server.url}/admin/openai_django/call/{call.pk}/change/")
        page.locator(".od-summary").wait_for()
        shot(page, screenshots_dir, f"11-call-{number:02d}-{call.operation}")
    page.goto(f"{live_server.url}/admin/openai_django/call/usage/")
    assert page.locator(".od-chart svg rect").count() > 0
    shot(page, screenshots_dir, "20-usage")

    page.goto(f"{live_server.url}/admin/openai_django/call/?operation=createChatCompletion")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "replay_selected")
    page.click("button[name=index]")
    page.locator("#id_model").wait_for()
    shot(page, screenshots_dir, "21-bulk-replay-confirm")
    page.fill("#id_model", "gpt-4o-mini")
    page.click("input[type=submit][value^='Yes, replay']")
    page.wait_for_selector(".messagelist")
    page.click(".messagelist a:text('compare them with their originals')")
    page.locator(".od-groups").wait_for()
    shot(page, screenshots_dir, "22-compare-report")

    page.goto(f"{live_server.url}/admin/openai_django/apikey/add/")
    page.fill("#id_user", str(admin_user.pk))
    page.fill("#id_name", "nightly export")
    page.click("input[name=_save]")
    secret = page.locator("#od-new-key").inner_text()
    assert secret.startswith("sk-od-")
    shot(page, screenshots_dir, "32-key-created")
    page.goto(f"{live_server.url}/admin/openai_django/apikey/")
    assert secret not in page.content()
    shot(page, screenshots_dir, "30-keys")
    page.goto(f"{live_server.url}/admin/openai_django/apikey/{key.pk}/change/")
    shot(page, screenshots_dir, "31-key")


def test_a_responses_call_page_in_a_browser(page, live_server, admin_user, sdk, upstream,
                                            screenshots_dir):
    """A Responses call with instructions, an image, a tool round trip and reasoning reads as
    a conversation; the reasoning summary folds; no stored script runs."""
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    weather = {"type": "function", "name": "get_weather", "description": "Weather of a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    response = sdk.responses.with_raw_response.create(
        model="o4-mini", instructions="You answer about pictures and weather.",
        reasoning={"effort": "low", "summary": "auto"}, tools=[weather], input=[
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is this? <script>alert(1)</script>"},
                {"type": "input_image", "image_url": data_url}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city": "Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 3}'},
            {"role": "user", "content": "So, is it cold there?"}])
    call_id = response.headers["X-Call-Id"]
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(page, live_server)
    page.goto(f"{live_server.url}/admin/openai_django/call/{call_id}/change/")
    conversation = page.locator(".od-conversation")
    conversation.wait_for()
    assert conversation.locator("img").count() == 1
    assert "<script>alert(1)</script>" in conversation.inner_text()
    reasoning = conversation.locator("details.od-message-reasoning")
    assert reasoning.count() == 1
    reasoning.locator("summary").click()
    assert "Thinking it over" in reasoning.inner_text()
    shot(page, screenshots_dir, "40-responses-call")
    assert dialogs == []
