"""PostgreSQL specifics: the partial indexes exist and the app's own queries can use them, JSON
is jsonb, connections are kept. Runs when the suite runs on PostgreSQL (scripts/test does both);
on SQLite these tests are skipped, the rest of the suite covers the behaviour."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from openai_django import retention
from openai_django.models import Artifact, Call

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the suite runs on SQLite"),
]


def indexes(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                       [table])
        return dict(cursor.fetchall())


def test_partial_indexes_and_no_duplicate_foreign_key_indexes():
    call = indexes("openai_django_call")
    assert "WHERE (NOT ((status)::text = 'succeeded'::text))" in call["od_call_status_created"]
    assert "WHERE (replay_of_id IS NOT NULL)" in call["od_call_replay_of"]
    assert "WHERE (target_type_id IS NOT NULL)" in call["od_call_target"]
    assert "body_purged_at IS NULL" in call["od_call_bodies_kept"]
    assert "NOT metadata_only" in call["od_call_bodies_kept"]
    assert "WHERE (NOT ((idempotency_key)::text = ''::text))" \
        in call["od_call_idempotency_unique"]
    # Foreign keys covered by a composite index have none of their own.
    for column in ("user_id", "api_key_id", "replay_of_id", "target_type_id"):
        singles = [name for name, sql in call.items() if f"btree ({column})" in sql]
        assert singles == (["od_call_replay_of"] if column == "replay_of_id" else []), singles
    artifact = indexes("openai_django_artifact")
    assert "purged_at IS NULL" in artifact["od_artifact_stored"]


def plan(queryset, without=()):
    """The plan PostgreSQL picks when it may not scan the table: proves an index *can* serve
    the query (its WHERE implies the partial index's predicate), whatever the table's size.

    ``without`` names indexes that could serve the query too (e.g. the usage index, which also
    leads with ``created``): they are dropped for the plan only, and the drop rolled back, so
    the choice between two usable indexes on a near-empty table does not decide the test.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            for name in without:
                cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
        result = queryset.explain()
        transaction.set_rollback(True)
    return result


def test_the_apps_queries_use_the_partial_indexes():
    cutoff = timezone.now() - timedelta(days=30)
    batch = retention._expired_bodies(cutoff).order_by("created").values_list("pk")[:500]
    assert "od_call_bodies_kept" in plan(batch, without=["od_call_usage"])
    stored = retention._stored_artifacts().filter(created__lt=cutoff).order_by("created")
    assert "od_artifact_stored" in plan(stored.values_list("pk")[:500],
                                        without=["od_artifact_created"])
    assert "od_call_status_created" in plan(Call.objects.failed().order_by("-created")[:100],
                                            without=["od_call_usage"])
    assert "od_call_status_created" in plan(
        Call.objects.filter(status__in=[Call.Status.QUEUED, Call.Status.RUNNING]))
    assert "od_call_replay_of" in plan(Call.objects.replays().filter(replay_of_id=Call().id))
    user_calls = Call.objects.filter(user_id=1).order_by("-created")[:20]
    assert "od_call_user_created" in plan(user_calls)


def test_json_columns_are_jsonb():
    with connection.cursor() as cursor:
        cursor.execute("SELECT column_name, data_type FROM information_schema.columns "
                       "WHERE table_name = 'openai_django_call' AND column_name IN "
                       "('request_body', 'response_body', 'stream_events', 'error')")
        types = dict(cursor.fetchall())
    assert types == dict.fromkeys(("request_body", "response_body", "stream_events", "error"),
                                  "jsonb")


def test_connections_are_kept():
    """The settings keep connections (or pool them): no 8 ms connect per request."""
    settings_dict = connection.settings_dict
    pooled = bool(settings_dict.get("OPTIONS", {}).get("pool"))
    assert pooled or settings_dict["CONN_MAX_AGE"] != 0
    if not pooled:
        assert settings_dict["CONN_HEALTH_CHECKS"] is True


def test_bulk_purge_touches_only_expired_rows(django_user_model, settings):
    """Retention at scale on PostgreSQL: a few thousand rows, batches of 250."""
    settings.OPENAI_DJANGO = {**getattr(settings, "OPENAI_DJANGO", {}),
                              "RETENTION": {"bodies": 30}}
    user = django_user_model.objects.create_user(username="bulk")
    old = timezone.now() - timedelta(days=40)

    def call(i):
        bodies = i % 10 != 1
        return Call(created=old if i % 2 else timezone.now(), operation="createEmbedding",
                    method="POST", path="/embeddings", user=user,
                    status=Call.Status.SUCCEEDED, metadata_only=not bodies,
                    request_body={"input": f"text {i}"} if bodies else None,
                    prompt_preview=f"text {i}" if bodies else "",
                    response_body={"data": []} if bodies else None)

    Call.objects.bulk_create([call(i) for i in range(3000)])
    report = retention.purge(batch_size=250)
    # Odd rows are old; one in ten of them (i % 10 == 1) kept no bodies to purge.
    assert report.bodies == 1500 - 300
    assert not Call.objects.filter(created__lt=timezone.now() - timedelta(days=30),
                                   metadata_only=False, body_purged_at__isnull=True).exists()
    assert Call.objects.filter(body_purged_at__isnull=True, request_body__isnull=False).count() \
        == 1500
    assert not Artifact.objects.exists()
