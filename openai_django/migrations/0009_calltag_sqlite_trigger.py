"""SQLite only: a call's tag rows are written by a trigger of its INSERT.

A tagged call and its ``CallTag`` rows must be stored together. On PostgreSQL the recorder
writes both in one statement (a data-modifying ``WITH``); SQLite has none, and a transaction
of two statements cost a tagged call 0.6 ms more than an untagged one (Django's ``atomic`` on
SQLite toggles the connection's autocommit). This trigger expands the ``tags`` list of the
inserted row into its tag rows within the same statement: atomic, and no more Python work
than an untagged call. ``openai_django.tagging`` checks once per connection that the trigger
is there and otherwise writes the rows itself, in a transaction.
"""

from django.db import migrations

TRIGGER = "od_call_tag_rows"


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "sqlite":
        return
    quote = schema_editor.quote_name
    call = apps.get_model("openai_django", "Call")._meta
    tag = apps.get_model("openai_django", "CallTag")._meta
    tags, pk, created = (quote(call.get_field(n).column) for n in ("tags", "id", "created"))
    columns = ", ".join(quote(tag.get_field(n).column) for n in ("call", "tag", "created"))
    schema_editor.execute(
        f"CREATE TRIGGER IF NOT EXISTS {TRIGGER} AFTER INSERT ON {quote(call.db_table)} "
        f"WHEN NEW.{tags} IS NOT NULL AND NEW.{tags} <> '[]' BEGIN "
        f"INSERT INTO {quote(tag.db_table)} ({columns}) "
        f"SELECT NEW.{pk}, value, NEW.{created} FROM json_each(NEW.{tags}); END")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")


class Migration(migrations.Migration):
    dependencies = [("openai_django", "0008_tags_feedback")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
