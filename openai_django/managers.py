"""Persistence of calls: the manager is the only code that writes ``Call`` rows.

The recorder decides *what* a call's fields are; this decides *how* they reach the database:
one prepared INSERT when a call starts, one prepared UPDATE of the named fields when it ends
(through the group-commit writer when ``WRITER`` is on), and conditional updates
(:meth:`CallManager.transition`) for the moves between states that several processes race for.
"""

from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connections, models, router
from django.db.models import signals as model_signals

from openai_django import writer

# Fields whose database value is the Python value itself when the recorder set it (a str, an
# int, a float, a bool or None): binding them skips the ORM's per-field prep (a third of the
# cost of a save on the hot path).
_PLAIN_FIELDS = (models.CharField, models.TextField, models.IntegerField, models.FloatField,
                 models.BooleanField)


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
        self._statements = {}  # (vendor, kind, fields) -> SQL
        self._converters = {}  # (vendor, field name) -> callable(value) -> database value

    def _orm_only(self):
        # A site listening to the model's signals gets them: the ORM's save sends them.
        return (model_signals.pre_save.has_listeners(self.model)
                or model_signals.post_save.has_listeners(self.model))

    def _statement(self, conn, kind, names):
        key = (conn.vendor, kind, names)
        sql = self._statements.get(key)
        if sql is None:
            meta = self.model._meta
            quote = conn.ops.quote_name
            columns = [meta.get_field(name).column for name in names]
            if kind == "insert":
                sql = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(map(quote, columns))}) "
                       f"VALUES ({', '.join(['%s'] * len(columns))})")
            else:
                sql = (f"UPDATE {quote(meta.db_table)} SET "
                       f"{', '.join(quote(c) + ' = %s' for c in columns)} "
                       f"WHERE {quote(meta.pk.column)} = %s")
            self._statements[key] = sql
        return sql

    def _converter(self, conn, field):
        key = (conn.vendor, field.name)
        convert = self._converters.get(key)
        if convert is None:
            plain = isinstance(field, _PLAIN_FIELDS)
            if field.is_relation:
                plain = isinstance(field.target_field, (models.AutoField, models.BigAutoField,
                                                        models.IntegerField))
            if plain:
                def convert(value, field=field):
                    if value is None or type(value) in (str, int, float, bool):
                        return value
                    return field.get_db_prep_save(value, connection=conn)
            else:
                def convert(value, field=field, conn=conn):
                    return field.get_db_prep_save(value, connection=conn)
            self._converters[key] = convert
        return convert

    def _bind(self, conn, fields, call, add):
        """The database values of ``fields`` of ``call``, as the ORM's save would bind them."""
        return [self._converter(conn, field)(field.pre_save(call, add)) for field in fields]

    def _execute(self, alias, sql, params, kind):
        if writer.enabled() and writer.usable(alias):
            writer.get_writer(alias).submit(sql, params, kind=kind)
            return None
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def record_new(self, call):
        """``call.save(force_insert=True)`` as one prepared statement.

        The ORM's save rebuilds the same 45-column INSERT through its compiler on every call
        (about 0.4 ms on the hot path); this binds the values with each field's own
        ``get_db_prep_save`` (so JSON, UUID and datetime columns are stored exactly as the
        ORM stores them) into SQL built once.
        """
        if self._orm_only():
            call.save(force_insert=True)
            return call
        alias = router.db_for_write(self.model, instance=call)
        conn = connections[alias]
        fields = self.model._meta.local_concrete_fields
        sql = self._statement(conn, "insert", tuple(f.name for f in fields))
        self._execute(alias, sql, self._bind(conn, fields, call, True), "insert")
        call._state.adding = False
        call._state.db = alias
        return call

    def save_fields(self, call, names):
        """``call.save(update_fields=names)`` as one prepared statement."""
        names = tuple(names)
        if self._orm_only():
            call.save(update_fields=names)
            return
        alias = call._state.db or router.db_for_write(self.model, instance=call)
        conn = connections[alias]
        get = self.model._meta.get_field
        params = self._bind(conn, [get(name) for name in names], call, False)
        params.append(self.model._meta.pk.get_db_prep_value(call.pk, conn))
        rows = self._execute(alias, self._statement(conn, "update", names), params, "update")
        if rows == 0:
            raise DatabaseError("Save with update_fields did not affect any rows.")

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
