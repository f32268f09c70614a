"""Persistence of calls: the manager is the only code that writes ``Call`` rows.

The recorder decides *what* a call's fields are; this decides *how* they reach the database:
one prepared INSERT when a call starts, one prepared UPDATE of the named fields when it ends
(through the group-commit writer when ``WRITER`` is on), and conditional updates
(:meth:`CallManager.transition`) for the moves between states that several processes race for.
"""

import uuid
from datetime import datetime
from datetime import timezone as _timezone
from decimal import Decimal
from functools import partial
from operator import attrgetter, itemgetter

import orjson
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connections, models, router, transaction
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import signals as model_signals
from django.db.models.base import ModelState

from openai_django import writer
from openai_django.conf import app_settings

_UTC = _timezone.utc

# A recorded request body whose JSON is larger than this many bytes is kept in a row of its
# own (``RequestBody``, written in the same transaction as the call's row); the call's row
# holds a marker in its place, and ``call.request_body`` reads the body through it
# (models.RequestBodyAttribute). Why: the finish's UPDATE rewrites the whole row, and on
# SQLite a row is rewritten with every overflow page of its body, each a WAL frame, which the
# checkpoint then copies again; and SQLite's ``JSON_VALID`` check of the JSONField runs over
# every byte of the body (1.6 ms a MB). Figures: docs/performance.md, "Large request bodies
# kept apart".
REQUEST_BODY_APART_BYTES = 8 * 1024
APART_KEY = "$openai_django"


def apart_marker(size):
    """What the call's ``request_body`` column holds when its body is kept apart."""
    return {APART_KEY: {"kept_in": "openai_django_requestbody", "bytes": size}}


def is_apart_marker(value):
    return type(value) is dict and len(value) == 1 and APART_KEY in value


def _converter(conn, field):
    """A function from a field's Python value to its database value, as the ORM's save would
    bind it; plain values of plain fields pass as they are.

    On PostgreSQL, text and jsonb cannot hold a NUL character (``\u0000``), which any client
    may send in a prompt, a name or a header: it is recorded as U+FFFD there (what was sent
    upstream is unchanged), so such a call is recorded instead of failing with a 500.
    """
    plain = _plain(field)
    no_nul = conn.vendor == "postgresql"
    if conn.vendor == "sqlite" and isinstance(field, models.JSONField) and _plain_json(field):
        def convert(value, field=field, conn=conn):
            # The JSON text the ORM would store, with orjson (8-10x faster than json.dumps;
            # the record's nine JSON columns cost 40 µs a call that way). Whitespace and
            # the escaping of non-ASCII characters differ; the values read back are equal.
            # Anything orjson does not take as json.dumps would goes the ORM's way.
            if value is None:
                return None
            if type(value) in (dict, list):
                try:
                    return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
                except (TypeError, orjson.JSONEncodeError):
                    pass
            return field.get_db_prep_save(value, connection=conn)
        return convert
    if plain is str:
        def convert(value, field=field):
            if type(value) is str:
                return value.replace("\x00", "\ufffd") if no_nul and "\x00" in value else value
            if isinstance(value, str):
                # A choices member (Call.Status.RUNNING) bound as the plain str it equals:
                # the same text in the column, and no miss in sqlite3's adapter registry,
                # whose fallback looks ``__adapt__`` up on its protocol type and formats the
                # AttributeError it raises (five such members a recorded call; with the
                # five booleans, see writer._plain_adapters: 2.35-2.38 -> 2.32-2.33 M
                # instructions a call, ``python -m bench.instructions --writer 0
                # --checkpoint 0``, 2026-12-02).
                value = str.__str__(value)
                return value.replace("\x00", "\ufffd") if no_nul and "\x00" in value else value
            if value is None:
                return value
            return field.get_db_prep_save(value, connection=conn)
    elif plain is not None:
        def convert(value, field=field, kinds=plain):
            # A number of the field's own kind is what the field's prep returns.
            if value is None or type(value) in kinds:
                return value
            return field.get_db_prep_save(value, connection=conn)
    elif type(field) is models.DateTimeField:
        adapt = conn.ops.adapt_datetimefield_value
        sqlite = conn.vendor == "sqlite"

        def convert(value, field=field, conn=conn):
            # An aware datetime is what the ORM's prep would hand the backend unchanged:
            # straight to the backend's adapter (the field's three-level prep cost 4 us a
            # column, four columns a call).
            if type(value) is datetime and value.tzinfo is not None:
                if sqlite and value.tzinfo is _UTC and conn.timezone is _UTC:
                    # What SQLite's adapter makes of a UTC datetime (``timezone.now()``) for
                    # a connection in UTC: its text without the offset, without the
                    # adapter's is_aware / make_naive / astimezone (four columns a call:
                    # 2.32-2.33 -> 2.305-2.308 M instructions a recorded call, ``python -m
                    # bench.instructions --writer 0 --checkpoint 0``, 2026-12-02).
                    return str(value.replace(tzinfo=None))
                return adapt(value)
            return None if value is None else field.get_db_prep_save(value, connection=conn)
    elif (type(field) is models.DecimalField
          and type(conn.ops).adapt_decimalfield_value
          is BaseDatabaseOperations.adapt_decimalfield_value):
        def convert(value, field=field, conn=conn):
            # A finite Decimal (the cost) is what the field's prep makes of it, a Decimal
            # equal to it, handed to a backend that adapts none: without to_python twice
            # over (9 us a save, one column in each statement).
            if type(value) is Decimal and value.is_finite():
                return value
            return None if value is None else field.get_db_prep_save(value, connection=conn)
    elif type(field) is models.UUIDField:
        native = conn.features.has_native_uuid_field

        def convert(value, field=field, conn=conn):
            if type(value) is uuid.UUID:
                return value if native else value.hex
            return None if value is None else field.get_db_prep_save(value, connection=conn)
    elif no_nul and isinstance(field, models.JSONField) and _plain_json(field) and _psycopg3():
        from django.db.backends.postgresql.psycopg_any import Jsonb

        def convert(value, field=field, conn=conn):
            # As the ORM binds it (a Jsonb), with the text made once by orjson: the NUL
            # check and the dump are one pass, where json.dumps would be a second.
            if value is None:
                return None
            if type(value) in (dict, list):
                try:
                    text = orjson.dumps(value, option=_ORJSON_OPTIONS)
                    if b"\\u0000" in text:
                        value = _replace_nul(value)
                        text = orjson.dumps(value, option=_ORJSON_OPTIONS)
                except (TypeError, orjson.JSONEncodeError):
                    pass
                else:
                    text = text.decode()
                    return Jsonb(value, dumps=lambda _value, text=text: text)
            return field.get_db_prep_save(without_nul(value), connection=conn)
    elif no_nul and isinstance(field, models.JSONField):
        def convert(value, field=field, conn=conn):
            return field.get_db_prep_save(without_nul(value), connection=conn)
    elif field.get_db_prep_save(None, connection=conn) is None:
        def convert(value, field=field, conn=conn):
            return None if value is None else field.get_db_prep_save(value, connection=conn)
    else:
        def convert(value, field=field, conn=conn):
            return field.get_db_prep_save(value, connection=conn)
    return convert


def _plain(field):
    """What a plain field's converter passes as it is (binding them skips the ORM's
    per-field prep, a third of the cost of a save on the hot path): ``str`` for a text field
    (and None, and choices members as their str), else the tuple of number types the
    field's prep would return unchanged (and None); ``None`` for a field that is not
    plain."""
    if field.is_relation:
        target = field.target_field
        return (int,) if isinstance(target, (models.AutoField, models.BigAutoField,
                                             models.IntegerField)) else None
    if isinstance(field, (models.CharField, models.TextField)):
        return str
    if isinstance(field, models.BooleanField):
        return (bool,)
    if isinstance(field, models.IntegerField):
        return (int,)
    if isinstance(field, models.FloatField):
        return (float,)
    return None


def _binder(conn, model, fields, plan):
    """A function from a call to the parameters of its statement: ``[convert(get(call)) for
    get, convert in plan]``, in fewer steps on SQLite.

    There, the plain fields (most of the 58 columns) are read in one ``attrgetter`` and
    checked in one pass per kind of field (texts, integers, ...) for types ``sqlite3`` binds
    as the plain converter would (the record's choices members among them: an adapter gives
    their ``str``); only the other columns (JSON, datetimes, the id) go through their
    converter. A value of another type sends the whole statement the general way. (The
    INSERT's 58 converter calls and the UPDATE's 31 were a third of the recorded call's
    Python calls: 2.293 -> 2.246 M instructions a recorded call, ``python -m
    bench.instructions --writer 0 --checkpoint 0``, 2026-12-03.)
    """
    def each(call):
        return [convert(get(call)) for get, convert in plan]

    if conn.vendor != "sqlite" or any(type(get) is not attrgetter for get, _ in plan):
        return each
    texts = _texts(model)
    groups = {}  # the types passed as they are -> the positions of the fields that pass them
    for i, field in enumerate(fields):
        kinds = _plain(field)
        if kinds is not None:
            passed = texts if kinds is str else frozenset((*kinds, type(None)))
            groups.setdefault(passed, []).append(i)
    plain = frozenset(i for positions in groups.values() for i in positions)
    if len(plain) < 2:
        return each
    get_all = attrgetter(*(field.attname for field in fields))
    checks = tuple((passed, _items(positions)) for passed, positions in groups.items())
    special = tuple((i, convert) for i, (_, convert) in enumerate(plan) if i not in plain)

    def bind(call):
        values = list(get_all(call))
        for passed, get in checks:
            if not passed.issuperset(map(type, get(values))):
                return each(call)
        for i, convert in special:
            values[i] = convert(values[i])
        return values

    return bind


def _items(positions):
    """A function from a sequence to the tuple of its items at ``positions``."""
    if len(positions) == 1:
        position = positions[0]
        return lambda values: (values[position],)
    return itemgetter(*positions)


def _texts(model):
    """The types of the values a text field's converter hands ``sqlite3`` as they are, or as
    values ``sqlite3`` binds to the same text: str, None, and the model's choices.

    A choices member (``Call.Status.RUNNING``, a str subclass) is what the converter turns
    into the str it equals; bound as it is, ``sqlite3`` gives it to the adapter registered
    here for its class, ``str.__str__``: the same str. A class for which the site registered
    an adapter of its own is left to the converter.
    """
    import sqlite3

    types = {str, type(None)}
    for value in vars(model).values():
        if isinstance(value, type) and issubclass(value, models.TextChoices):
            key = (value, sqlite3.PrepareProtocol)
            if key not in sqlite3.adapters:
                sqlite3.register_adapter(value, str.__str__)
            if sqlite3.adapters[key] is str.__str__:
                types.add(value)
    return frozenset(types)


def _getter(field, add):
    """``field.pre_save(call, add)`` as a function of the call: the attribute itself where the
    field does not override ``pre_save``, or is a date field that sets nothing itself (no
    ``auto_now``, no ``auto_now_add`` on an insert)."""
    if type(field).pre_save is models.Field.pre_save:
        return attrgetter(field.attname)
    if (type(field).pre_save in (models.DateField.pre_save, models.DateTimeField.pre_save)
            and not field.auto_now and not (field.auto_now_add and add)):
        return attrgetter(field.attname)  # what DateField.pre_save returns then
    return partial(_pre_save, field, add)


def _pre_save(field, add, call):
    return field.pre_save(call, add)


def _psycopg3():
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return is_psycopg3


def _plain_json(field):
    """A JSONField that stores what json.dumps makes of the value (no encoder, no override)."""
    return (field.encoder is None
            and type(field).get_prep_value is models.JSONField.get_prep_value
            and type(field).get_db_prep_save is models.JSONField.get_db_prep_save)


# Types orjson would serialise where json.dumps raises go to json.dumps (the ORM's way), so
# that what the record accepts does not depend on the backend; keys that are not strings
# become strings as json.dumps makes them.
_ORJSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS)


def without_nul(value):
    """``value`` with every NUL character in its strings (keys too) replaced by U+FFFD; the
    value itself when it has none (one scan of its JSON, no copy)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    try:
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except TypeError:
        return value
    return _replace_nul(value)


def _replace_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_nul(v) for v in value]
    return value


class CallQuerySet(models.QuerySet):
    def finished(self):
        return self.filter(status__in=self.model.Status.finished())

    def failed(self):
        return self.filter(status=self.model.Status.FAILED)

    def replays(self):
        return self.filter(replay_of__isnull=False)

    def for_object(self, obj):
        """Every call attached to one of the site's own objects (``target=`` in the API)."""
        return self.filter(
            target_type=ContentType.objects.get_for_model(obj), target_id=str(obj.pk)
        )

    def about(self, object_id):
        """Every call that created or concerned the upstream object ``object_id`` (a file,
        a batch, a response...), oldest first."""
        return self.filter(object_id=object_id).order_by("created")


class CallManager(models.Manager.from_queryset(CallQuerySet)):
    """``record_new``, ``save_fields`` and ``transition``: the writes of a call's life."""

    def __init__(self):
        super().__init__()
        # (vendor, kind, field names) -> (SQL, ((getter, converter), ...)): ``getter(call)``
        # is the field's ``pre_save`` value, ``converter`` makes it the database's.
        self._plans = {}
        self._binders = {}  # the same keys -> _binder's function of a call
        self._blank = None

    def new(self, **values):
        """``Call(**values)`` as the record's start builds it, without ``Model.__init__``.

        The model's constructor walks all 58 fields for every call, resolving each default
        through the field (``get_default``) and each keyword through ``setattr``: 95 us of
        a recorded call's 1.25 ms (measured with thread_time around it, 3,000 chat calls in
        one process). Here the constant defaults are resolved once and copied in one dict
        update, the callable ones (``uuid7``, ``now``, ``dict``, ``list``) are called, the
        values are stored as attributes and the relations (``user``, ``api_key``, the
        target) go through their descriptors as in ``__init__``. A site that listens to
        ``pre_init``/``post_init`` for calls, or a keyword the model does not know, gets the
        model's own constructor.
        """
        model = self.model
        blank = self._blank
        if blank is None:
            blank = self._blank = self._blank_call()
        constants, factories, plain, related = blank
        if (values.keys() - plain - related
                or model_signals.pre_init.has_listeners(model)
                or model_signals.post_init.has_listeners(model)):
            return model(**values)
        call = model.__new__(model)
        call._state = ModelState()
        state = call.__dict__
        state.update(constants)
        for attname, factory in factories:
            if attname not in values:
                state[attname] = factory()
        for name, value in values.items():
            if name in related:
                setattr(call, name, value)
            else:
                state[name] = value
        return call

    def _blank_call(self):
        """What :meth:`new` starts from: (constant defaults by attname, (attname, callable
        default) pairs, the names stored as they are, the names set through a descriptor)."""
        meta = self.model._meta
        constants, factories, plain, related = {}, [], set(), set()
        for field in meta.concrete_fields:
            if field.has_default() and callable(field.default):
                factories.append((field.attname, field.default))
            else:
                value = field.get_default()
                if not isinstance(value, (str, int, float, bool, type(None))):
                    return self._no_blank()
                constants[field.attname] = value
            plain.add(field.attname)
            if field.is_relation:
                related.add(field.name)
            else:
                plain.add(field.name)
        for field in meta.private_fields:
            related.add(field.name)
        return constants, tuple(factories), frozenset(plain), frozenset(related)

    def _no_blank(self):
        # A default that is a shared mutable object: every call gets the constructor.
        return {}, (), frozenset(), frozenset()

    def _orm_only(self):
        # A site listening to the model's signals gets them: the ORM's save sends them.
        return (model_signals.pre_save.has_listeners(self.model)
                or model_signals.post_save.has_listeners(self.model))

    def _plan(self, conn, kind, names):
        """The SQL of an INSERT (``names=None``: every concrete field) or an UPDATE of
        ``names``, and each field with the function that turns its value into the database's,
        built once per statement: a save then costs one list comprehension."""
        key = (conn.vendor, kind, names)
        plan = self._plans.get(key)
        if plan is None:
            meta = self.model._meta
            fields = meta.local_concrete_fields if names is None else [
                meta.get_field(name) for name in names]
            quote = conn.ops.quote_name
            columns = [quote(field.column) for field in fields]
            if kind == "insert":
                sql = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(columns)}) "
                       f"VALUES ({', '.join(['%s'] * len(columns))})")
            else:
                sql = (f"UPDATE {quote(meta.db_table)} SET "
                       f"{', '.join(c + ' = %s' for c in columns)} "
                       f"WHERE {quote(meta.pk.column)} = %s")
                if kind == "update_running":
                    sql += f" AND {quote(meta.get_field('status').column)} = %s"
            add = kind == "insert"
            pairs = tuple((_getter(f, add), _converter(conn, f)) for f in fields)
            # The binder first: a thread that finds the plan finds its binder.
            self._binders[key] = _binder(conn, self.model, fields, pairs)
            plan = self._plans[key] = (sql, pairs)
        return plan

    def _params(self, conn, kind, names, call):
        """The parameters of ``call``'s INSERT (``names=None``) or UPDATE of ``names``, as
        ``[convert(get(call)) for get, convert in plan]`` makes them (see _binder)."""
        sql, _ = self._plan(conn, kind, names)
        return sql, self._binders[(conn.vendor, kind, names)](call)

    def _execute(self, alias, sql, params, kind, conn=None, then=()):
        # ``conn``: the caller's ``connections[alias]`` (each lookup goes through asgiref's
        # Local, which raises and catches a RuntimeError when no event loop runs). ``then``:
        # statements committed with this one or not at all.
        if conn is None:
            conn = connections[alias]
        if app_settings.WRITER and not conn.in_atomic_block:
            writer.get_writer(alias).submit(sql, params, kind=kind, then=then)
            return None
        if not then:
            return writer.execute(conn, sql, params)
        with transaction.atomic(using=alias):
            count = writer.execute(conn, sql, params)
            for more_sql, more_params in then:
                writer.execute(conn, more_sql, more_params)
        return count

    def record_new(self, call):
        """``call.save(force_insert=True)`` as one prepared statement.

        The ORM's save rebuilds the same 49-column INSERT through its compiler on every call
        (about 0.4 ms on the hot path); this binds the values with each field's own
        ``get_db_prep_save`` (so JSON, UUID and datetime columns are stored exactly as the
        ORM stores them) into SQL built once.
        """
        alias = router.db_for_write(self.model, instance=call)
        if call.tags:
            # A tagged call and its tag index rows are written together (tagging.py).
            from openai_django.tagging import record_with_tags

            return record_with_tags(self, call, alias)
        return self._insert(call, alias)

    def _insert(self, call, alias):
        if self._orm_only():
            call.save(force_insert=True, using=alias)
            return call
        conn = connections[alias]
        sql, params, then = self.insert_statements(call, conn)
        self._execute(alias, sql, params, "insert", conn, then=then)
        call._state.adding = False
        call._state.db = alias
        return call

    def insert_statements(self, call, conn):
        """``(sql, params, then)``: ``call``'s INSERT, and the statements to commit with it
        (its request body's row, when the body is kept apart; see :meth:`apart`)."""
        apart = self.apart(call, conn)
        if apart is None:
            sql, params = self._params(conn, "insert", None, call)
            return sql, params, ()
        # The row is bound with the marker; the call keeps its body in memory.
        state = call.__dict__
        body, state["request_body"] = state["request_body"], apart_marker(apart[0])
        try:
            sql, params = self._params(conn, "insert", None, call)
        finally:
            state["request_body"] = body
        return sql, params, apart[1]

    def apart(self, call, conn):
        """``(bytes, statements)`` when ``call``'s request body is kept apart (its JSON over
        :data:`REQUEST_BODY_APART_BYTES`): its size and the INSERT of its ``RequestBody`` row;
        else ``None``. A call the recorder gave the size of the client's body
        (``call.request_bytes``) is measured only when that is over the limit, so a small
        call through the gateway pays two lookups; any other (a replay, the Python API) has
        its body serialised once here to know."""
        state = call.__dict__
        body = state.get("request_body")
        if type(body) not in (dict, list):
            return None
        size = state.get("request_bytes")
        if size is not None and size <= REQUEST_BODY_APART_BYTES:
            return None
        try:
            text = orjson.dumps(body, option=_ORJSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            return None  # the ORM's json.dumps, in the row
        if len(text) <= REQUEST_BODY_APART_BYTES:  # the redaction hook may have cut it
            return None
        from openai_django.models import RequestBody

        meta = RequestBody._meta
        quote = conn.ops.quote_name
        sql = (f"INSERT INTO {quote(meta.db_table)} ({quote(meta.get_field('call').column)}, "
               f"{quote(meta.get_field('text').column)}) VALUES (%s, %s)")
        call_id = meta.get_field("call").get_db_prep_save(call.pk, conn)
        return len(text), ((sql, [call_id, text.decode()]),)

    def save_fields(self, call, names):
        """``call.save(update_fields=names)`` as one prepared statement (``names``: a
        tuple)."""
        if self._orm_only():
            call.save(update_fields=names)
            return
        alias = call._state.db or router.db_for_write(self.model, instance=call)
        conn = connections[alias]
        sql, params = self._params(conn, "update", names, call)
        params.append(self.model._meta.pk.get_db_prep_value(call.pk, conn))
        if self._execute(alias, sql, params, "update", conn) == 0:
            raise DatabaseError("Save with update_fields did not affect any rows.")

    def update_running(self, pk, alias, **values):
        """``filter(pk=pk, status="running").update(**values)`` as one prepared statement,
        its values bound as the ORM binds them (a stream's checkpoint: a late one never
        overwrites a finished record). The ORM builds the same UPDATE through its query
        compiler each time and encodes the JSON with ``json.dumps``: for 60 chat events, 220
        us of CPU a save against 48 us here, and a whole checkpoint 303 -> 119-130 us
        (``python -m bench.stream_save_bench``, 2026-12-02, load 3.8). Returns the row
        count."""
        conn = connections[alias]
        names = tuple(values)
        sql, plan = self._plan(conn, "update_running", names)
        params = [convert(values[name]) for name, (_, convert) in zip(names, plan)]
        params.append(self.model._meta.pk.get_db_prep_value(pk, conn))
        params.append(self.model.Status.RUNNING.value)
        return writer.execute(conn, sql, params)

    def transition(self, call, expected, **changes):
        """Apply ``changes`` to the row only if it still matches ``expected``
        (compare-and-set).

        Background calls move between states from several processes at once (a redelivered
        message, the sweep, a cancel): a conditional UPDATE lets exactly one of them win
        without locks on any database. On success ``call`` is updated in memory and ``True``
        returned.
        """
        if not self.filter(pk=call.pk, **expected).update(**changes):
            return False
        for name, value in changes.items():
            setattr(call, name, value)
        return True
