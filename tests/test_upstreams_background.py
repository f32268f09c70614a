"""Background calls and admin replays route the same way: a real Celery worker (its settings
the test's, UPSTREAMS included) sends each call to the upstream of its model, falls back, and
a replay against another model may go to another upstream (eager Celery in the replay test,
the task code a worker runs)."""

import pytest

from openai_django.models import Call
from tests.fixtures.celery_worker import wait_for

from .test_upstreams import HELLO, chat, last_call, posted

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIST = "/admin/openai_django/call/"


def finished(call_id, timeout=60):
    def check():
        call = Call.objects.get(pk=call_id)
        return call if call.is_finished else None

    return wait_for(check, timeout, message=f"call {call_id} to finish")


@pytest.mark.parametrize("celery_broker", ["redis"], indirect=True)
def test_background_calls_route_and_fall_back_in_the_worker(celery_broker, http, many,
                                                            celery_worker_factory):
    celery_worker_factory()
    many["a"].fault(path="/v1/chat/completions", kind="status", status=500, times=1)
    queued = [http.post(f"{http.base}/chat/completions", headers={"Prefer": "respond-async"},
                        json={"model": model, "messages": HELLO})
              for model in ("gpt-4o", "local/tiny")]
    assert [r.status_code for r in queued] == [202, 202]
    fell_back = finished(queued[0].json()["id"])
    assert fell_back.status == Call.Status.SUCCEEDED and fell_back.upstream == "b"
    assert fell_back.attempt_count == 1  # one attempt of the task, two upstreams in it
    assert [(a["upstream"], a.get("status")) for a in fell_back.upstream_attempts] == \
        [("a", 500), ("b", 200)]
    renamed = finished(queued[1].json()["id"])
    assert renamed.upstream == "b" and renamed.status == Call.Status.SUCCEEDED
    assert "tiny" in [r["body"]["model"] for r in posted(many["b"])]


def test_replay_against_another_model_crosses_upstreams(http, many, replayer_client,
                                                       eager_celery):
    original = last_call(chat(http, "gpt-4o-mini"))
    assert original.upstream == "a"
    response = replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": "local/small"})
    assert response.status_code == 302
    replay = original.replays.get()
    assert replay.status == Call.Status.SUCCEEDED, replay.error
    assert replay.upstream == "b" and replay.model == "local/small"
    assert posted(many["b"])[-1]["body"]["model"] == "small"
    assert posted(many["b"])[-1]["body"]["messages"] == HELLO
    # The same model replayed goes where the original went.
    replayer_client.post(f"{LIST}{original.pk}/replay/", {"model": ""})
    assert {c.upstream for c in original.replays.all()} == {"a", "b"}


@pytest.mark.parametrize("celery_broker", ["redis"], indirect=True)
def test_a_circuit_opened_here_is_skipped_by_the_worker(celery_broker, http, many,
                                                       celery_worker_factory, settings):
    from openai_django.breaker import breaker

    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CIRCUIT_BREAKER": {
        "threshold": 2, "cooldown": 60.0, "backend": "db", "refresh": 0}}
    celery_worker_factory()
    many["a"].fault(path="/v1/chat/completions", kind="status", status=503, times=2)
    for _ in range(2):  # in this process: a fails twice, its circuit opens (in the database)
        assert last_call(chat(http, "gpt-4o")).upstream == "b"
    breaker.flush()
    many["a"].clear_requests()
    queued = http.post(f"{http.base}/chat/completions", headers={"Prefer": "respond-async"},
                       json={"model": "gpt-4o", "messages": HELLO})
    call = finished(queued.json()["id"])
    assert call.upstream == "b"
    assert call.upstream_attempts[0] == {"upstream": "a", "model": "gpt-4o",
                                         "outcome": "skipped", "error": "circuit open"}
    assert not posted(many["a"])  # the worker never asked a


def test_the_replay_page_offers_the_models_the_upstreams_list(http, many, replayer_client,
                                                              clean_cache):
    original = last_call(chat(http, "gpt-4o-mini"))
    page = replayer_client.get(f"{LIST}{original.pk}/replay/").content.decode()
    assert '<option value="llama-3">' in page or 'value="llama-3"' in page
    assert "local/*" not in page
