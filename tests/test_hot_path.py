"""The hot path's shortcuts behave as the code they replace: ``Call.objects.new`` as
``Call(...)``, the settings kept in ``app_settings``' ``__dict__`` as a fresh read."""

import pytest
from django.db.models import signals
from django.test import override_settings

from openai_django.conf import app_settings
from openai_django.models import APIKey, Call


def _fields(call):
    return {k: v for k, v in call.__dict__.items() if k not in ("_state", "id", "created")}


@pytest.mark.django_db
def test_new_builds_what_the_constructor_builds(user):
    key, _ = APIKey.generate(user)
    values = {"operation": "createChatCompletion", "method": "POST", "status": "running",
              "user": user, "api_key": key, "tags": ["a"], "metadata": {"k": "v"},
              "stream": True}
    fast, slow = Call.objects.new(**values), Call(**values)
    assert _fields(fast) == _fields(slow)
    assert fast.user is user and fast.api_key is key  # the relations' caches, as __init__
    assert fast._state.adding and fast._state.db == slow._state.db
    # Fresh defaults: neither the callables' results nor the containers are shared.
    other = Call.objects.new(operation="x")
    assert other.id != fast.id and other.attempts == [] and other.attempts is not fast.attempts
    assert other.request_headers == {} and other.request_headers is not slow.request_headers
    fast.save(force_insert=True)
    assert _fields(Call.objects.get(pk=fast.pk))["tags"] == ["a"]


def test_new_refuses_what_the_constructor_refuses():
    with pytest.raises(TypeError):
        Call.objects.new(no_such_field=1)


def test_new_sends_the_init_signals_to_a_listener():
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance)

    signals.post_init.connect(listener, sender=Call)
    try:
        call = Call.objects.new(operation="x")
    finally:
        signals.post_init.disconnect(listener, sender=Call)
    assert seen == [call]


def test_a_setting_read_is_kept_and_forgotten_on_change():
    before = app_settings.TAGS_MAX
    assert "TAGS_MAX" in app_settings.__dict__  # the next read is an attribute hit
    with override_settings(OPENAI_DJANGO={"TAGS_MAX": before + 7}):
        assert "TAGS_MAX" not in app_settings.__dict__
        assert app_settings.TAGS_MAX == before + 7
    assert app_settings.TAGS_MAX == before
    with pytest.raises(AttributeError):
        app_settings.NOT_A_SETTING  # noqa: B018


@pytest.mark.django_db
def test_the_fast_converters_bind_what_the_orm_binds():
    import uuid
    from datetime import timedelta
    from datetime import timezone as dt_timezone
    from decimal import Decimal

    from django.core.exceptions import ValidationError
    from django.db import connection
    from django.db.models import DateTimeField, DecimalField, UUIDField
    from django.utils import timezone

    from openai_django.managers import _converter, _getter, _plain

    now = timezone.now()
    elsewhere = now.astimezone(dt_timezone(timedelta(hours=2)))  # aware, not UTC
    checked = 0
    for field in Call._meta.concrete_fields:
        if _plain(field) is None and not isinstance(field, (DateTimeField, UUIDField,
                                                             DecimalField)):
            continue  # JSON, binary: the ORM's own prep (tests/test_postgres.py)
        convert = _converter(connection, field)
        for value in (None, now, elsewhere, uuid.uuid4(), Call.Status.RUNNING, "text",
                      Decimal("0.000008"), Decimal("12.5"), 3, 2.5, True, Decimal("Infinity")):
            try:
                expected = field.get_db_prep_save(value, connection=connection)
            except (TypeError, ValueError, AttributeError, OverflowError, ValidationError):
                continue  # a value the field does not take
            got = convert(value)
            # A choices member is bound as the plain str it equals (the same text stored;
            # no lookup in sqlite3's adapter registry, see managers._converter).
            want = str if type(expected) is Call.Status else type(expected)
            if isinstance(expected, int) and want not in (int, bool) and type(got) is int:
                want = int  # psycopg's Int2 / Int4 wrappers of the same number
            assert (got, type(got)) == (expected, want), (field.name, value)
            checked += 1
    assert checked > 100
    call = Call.objects.new(operation="x", started_at=now)
    for field in Call._meta.concrete_fields:
        for add in (True, False):
            assert _getter(field, add)(call) == field.pre_save(call, add), field.name


def test_sqlite_binds_none_bytes_and_bools_through_the_registered_adapters():
    import sqlite3

    from openai_django import writer

    key = (type(None), sqlite3.PrepareProtocol)
    for kind in (type(None), bytes, bool):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters, kind
    db = sqlite3.connect(":memory:")
    db.execute("create table t (a, b, c, d)")
    db.execute("insert into t values (?, ?, ?, ?)", (None, b"\x00raw", True, False))
    assert db.execute("select a, typeof(a), b, typeof(b), c, typeof(c), d from t").fetchall() \
        == [(None, "null", b"\x00raw", "blob", 1, "integer", 0)]
    # A site's own adapter is kept.
    saved = sqlite3.adapters[key]
    try:
        def own(value):
            return "site's"

        sqlite3.adapters[key] = own
        writer._plain_adapters()
        assert sqlite3.adapters[key] is own
    finally:
        sqlite3.adapters[key] = saved


@pytest.mark.django_db
def test_the_binder_binds_what_each_converter_binds():
    """The SQLite binder (managers._binder) stores, column for column, what the field-by-field
    converters store: for a recorded call's values, choices members among them, and for
    values it leaves to the converters (a str subclass of a site's, a Decimal)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the binder's own path is SQLite's (elsewhere: the converters)")
    from decimal import Decimal

    from django.utils import timezone

    from openai_django import writer
    from openai_django.managers import _plain
    from openai_django.recorder import FINISH_FIELDS

    class Label(str):
        pass

    manager = Call.objects
    connection.ensure_connection()
    now = timezone.now()

    def made(**extra):
        return manager.new(
            created=now, started_at=now, operation="createChatCompletion", method="POST",
            path="/chat/completions", model="gpt-4o-mini", status=Call.Status.RUNNING,
            mode=Call.Mode.SYNC, source=Call.Source.HTTP, stream=False,
            request_body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            request_headers={"user-agent": "t"}, prompt_tokens=3, cost_usd=Decimal("0.5"),
            **extra)

    variants = [{}, {"session": Label("a site's str")}, {"total_tokens": True},
                {"latency_ms": 1.5, "query": "a=1"}]
    table = Call._meta.db_table
    for extra in variants:
        fast, slow = made(**extra), made(**extra)
        sql, params = manager._params(connection, "insert", None, fast)
        _, plan = manager._plan(connection, "insert", None)
        writer.execute(connection, sql, params)
        writer.execute(connection, sql, [convert(get(slow)) for get, convert in plan])
        done = timezone.now()
        for call in (fast, slow):
            call.status, call.outcome, call.finished_at = (
                Call.Status.SUCCEEDED, Call.Outcome.OK, done)
            call.response_body, call.completion_tokens = {"id": "x"}, 4
        update, params = manager._params(connection, "update", FINISH_FIELDS, fast)
        _, plan = manager._plan(connection, "update", FINISH_FIELDS)
        writer.execute(connection, update, [*params, fast.pk.hex])
        writer.execute(connection, update,
                       [*(convert(get(slow)) for get, convert in plan), slow.pk.hex])
        raw = connection.connection
        rows = [raw.execute(f'select * from "{table}" where id = ?', (c.pk.hex,)).fetchone()
                for c in (fast, slow)]
        columns = [d[0] for d in raw.execute(f'select * from "{table}" limit 0').description]
        differ = {name for name, a, b in zip(columns, *rows)
                  if (a, type(a)) != (b, type(b)) and name != "id"}
        assert not differ, (extra, differ)
    assert sum(_plain(f) is not None for f in Call._meta.local_concrete_fields) > 30
