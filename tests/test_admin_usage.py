"""The usage dashboard and the streamed exports."""

import csv
import io
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.http import StreamingHttpResponse
from django.utils import timezone

from openai_django.models import APIKey, Call

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_cache")]

LIST = "/admin/openai_django/call/"
USAGE = f"{LIST}usage/"


def row(user, key=None, days_ago=0, **fields):
    defaults = {"operation": "createChatCompletion", "method": "POST", "path": "/chat/completions",
                "model": "gpt-4o-mini", "status": Call.Status.SUCCEEDED, "response_status": 200,
                "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "cost_usd": Decimal("0.010000")}
    return Call.objects.create(**{**defaults, **fields, "user": user, "api_key": key,
                                  "created": timezone.now() - timedelta(days=days_ago)})


@pytest.fixture
def traffic(user, other_user):
    alice_key, _raw = APIKey.generate(user, name="alice script")
    bob_key, _raw = APIKey.generate(other_user, name="bob app")
    for _ in range(3):
        row(user, alice_key)
    row(user, alice_key, days_ago=2, model="gpt-4o", cost_usd=Decimal("0.500000"),
        total_tokens=1000, prompt_tokens=600, completion_tokens=400)
    row(other_user, bob_key, days_ago=5, model="gpt-4o", cost_usd=Decimal("0.250000"),
        status=Call.Status.FAILED)
    row(other_user, bob_key, days_ago=40, model="davinci", cost_usd=Decimal("9.000000"))
    return alice_key, bob_key


def test_dashboard_defaults_to_the_last_30_days(admin_client, traffic):
    response = admin_client.get(USAGE)
    assert response.status_code == 200
    data = response.context["data"]
    assert data["totals"]["calls"] == 5
    assert data["totals"]["failed"] == 1
    assert data["totals"]["tokens"] == 3 * 15 + 1000 + 15
    assert data["totals"]["cost"] == Decimal("0.78")
    assert [r["model"] for r in data["by_model"]] == ["gpt-4o", "gpt-4o-mini"]
    assert data["by_model"][0]["cost"] == Decimal("0.75")
    assert [r["label"] for r in data["by_user"]] == ["alice", "bob"]
    assert data["by_key"][0]["label"].startswith("alice script")
    assert len(data["days"]) == 30
    text = response.content.decode()
    assert "<svg" in text and text.count("<rect") >= 3 * 3
    assert "davinci" not in text  # 40 days ago: outside the default period


def test_dashboard_over_a_chosen_period(admin_client, traffic):
    today = timezone.localdate()
    response = admin_client.get(USAGE, {"start": (today - timedelta(days=60)).isoformat(),
                                        "end": (today - timedelta(days=3)).isoformat()})
    data = response.context["data"]
    assert data["totals"]["calls"] == 2
    assert {r["model"] for r in data["by_model"]} == {"gpt-4o", "davinci"}
    assert data["totals"]["cost_display"] == "$9.25"
    bad = admin_client.get(USAGE, {"start": today.isoformat(),
                                   "end": (today - timedelta(days=1)).isoformat()})
    assert "must not be after" in bad.content.decode()


def test_dashboard_rows_link_to_the_calls_they_count(admin_client, traffic):
    text = admin_client.get(USAGE).content.decode()
    assert f"{LIST}?model=gpt-4o&amp;created__gte=" in text
    link = text.split(f'href="{LIST}?model=gpt-4o&amp;', 1)[1].split('"', 1)[0]
    listed = admin_client.get(f"{LIST}?model=gpt-4o&" + link.replace("&amp;", "&"))
    assert listed.status_code == 200
    assert len(set(re.findall(r"call/([0-9a-f-]{36})/change/", listed.content.decode()))) == 2


def test_dashboard_needs_view_permission(client, user):
    user.is_staff = True
    user.save()
    client.force_login(user)
    assert client.get(USAGE).status_code == 403


def test_export_jsonl_of_the_filtered_list(admin_client, traffic):
    response = admin_client.get(f"{LIST}export/", {"format": "jsonl", "model": "gpt-4o"})
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Disposition"].startswith('attachment; filename="calls-')
    lines = b"".join(response.streaming_content).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and {r["model"] for r in records} == {"gpt-4o"}
    assert {r["user"] for r in records} == {"alice", "bob"}
    assert all(r["api_key"].startswith("sk-od-") and "…" in r["api_key"] for r in records)
    assert "payload" not in records[0] and "hashed_key" not in lines[0]


def test_export_csv_escapes_formulas(admin_client, user):
    row(user, prompt_preview="=HYPERLINK(\"http://evil\")", output_text="+1 ok")
    response = admin_client.get(f"{LIST}export/", {"format": "csv"})
    table = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, first = table[0], table[1]
    assert header[:4] == ["id", "created", "finished_at", "operation"]
    record = dict(zip(header, first))
    assert record["prompt"] == "'=HYPERLINK(\"http://evil\")"
    assert record["output_text"] == "'+1 ok"
    assert record["user"] == "alice" and record["cost_usd"] == "0.010000"


def test_export_actions_on_a_selection(admin_client, traffic):
    chosen = list(Call.objects.filter(model="gpt-4o-mini").values_list("pk", flat=True)[:2])
    response = admin_client.post(LIST, {"action": "export_jsonl", "index": 0,
                                        "_selected_action": [str(pk) for pk in chosen]})
    lines = b"".join(response.streaming_content).splitlines()
    assert {json.loads(line)["id"] for line in lines} == {str(pk) for pk in chosen}
    response = admin_client.post(LIST, {"action": "export_csv", "index": 0,
                                        "_selected_action": [str(pk) for pk in chosen]})
    assert len(b"".join(response.streaming_content).decode().strip().splitlines()) == 3


def test_export_streams_rows_in_chunks(admin_client, user, settings):
    """Rows are read a chunk at a time as the response is consumed, not all at once."""
    from openai_django.admin import export

    Call.objects.bulk_create([Call(operation="createChatCompletion", method="POST",
                                   path="/chat/completions", user=user, model="m")
                              for _ in range(25)])
    before, export.CHUNK_SIZE = export.CHUNK_SIZE, 10
    try:
        response = admin_client.get(f"{LIST}export/", {"format": "jsonl"})
        stream = iter(response.streaming_content)
        first = next(stream)
        assert json.loads(first)["object"] == "call"
        assert len(list(stream)) == 24
    finally:
        export.CHUNK_SIZE = before


def test_recompute_costs_after_the_price_table_changed(admin_client, user, settings):
    old = row(user, model="my-model", prompt_tokens=1000, completion_tokens=1000,
              cost_usd=None)
    other = row(user, model="gpt-4o-mini")
    settings.OPENAI_DJANGO = {**(getattr(settings, "OPENAI_DJANGO", {}) or {}),
                              "PRICES": {"my-model": {"input": "0.5", "output": "1.5"}}}
    selected = [str(old.pk), str(other.pk)]
    confirm = admin_client.post(LIST, {"action": "recompute_costs", "index": 0,
                                       "_selected_action": selected})
    assert "Yes, recompute" in confirm.content.decode()
    old.refresh_from_db()
    assert old.cost_usd is None  # nothing before the confirmation
    done = admin_client.post(LIST, {"action": "recompute_costs", "post": "yes",
                                    "_selected_action": selected}, follow=True)
    assert "recomputed for 2 calls; 2 changed" in done.content.decode()
    old.refresh_from_db()
    other.refresh_from_db()
    assert old.cost_usd == Decimal("2.000000")
    # 0.0000045 (10 x 0.00015/1K + 5 x 0.0006/1K), rounded half even
    assert other.cost_usd == Decimal("0.000004")


def test_recompute_needs_the_change_permission(viewer_client, user):
    text = viewer_client.get(LIST).content.decode()
    assert "recompute_costs" not in text and "export_jsonl" in text


def test_past_days_are_cached_and_today_is_always_fresh(admin_client, user):
    row(user, days_ago=10, model="gpt-4o")
    first = admin_client.get(USAGE).context["data"]
    assert first["totals"]["calls"] == 1
    row(user, days_ago=10, model="gpt-4o")  # a past day: served from the cache
    row(user, model="gpt-4o-mini")  # today: always read again
    second = admin_client.get(USAGE).context["data"]
    assert second["totals"]["calls"] == 2
    assert {r["model"] for r in second["by_model"]} == {"gpt-4o", "gpt-4o-mini"}
    from openai_django.admin.usage import forget_cached_usage

    forget_cached_usage()
    assert admin_client.get(USAGE).context["data"]["totals"]["calls"] == 3
