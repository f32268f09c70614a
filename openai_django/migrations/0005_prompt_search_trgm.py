"""PostgreSQL only: a trigram index for the admin's search in prompts.

The admin searches ``prompt_preview`` with ``icontains`` (``UPPER(prompt_preview) LIKE
UPPER('%word%')``). Without an index that is a scan of the whole table for a rare word, and
the planner, having no statistics for the expression, also picks a scan for a common one. A
GIN trigram index on the same expression serves the rare words and gives the planner the
statistics to walk the date index for the common ones (EXPLAIN figures in the README, "The admin").
GIN's pending list keeps the cost of an INSERT about what it was.

It needs the ``pg_trgm`` extension (trusted since PostgreSQL 13: a database owner may create
it). Where it cannot be created the index is skipped with a notice and search scans, as on
SQLite. Built ``CONCURRENTLY`` so a live table keeps taking writes while it builds.
"""

from django.db import migrations

INDEX = "od_call_prompt_trgm"


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("openai_django", "Call")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS pg_trgm; "
            "EXCEPTION WHEN insufficient_privilege OR feature_not_supported THEN "
            "RAISE NOTICE 'pg_trgm is not available: prompt search will scan'; END $$"
        )
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone() is None:
            return
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {table} "
            f"USING gin ((UPPER(prompt_preview::text)) gin_trgm_ops)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("openai_django", "0004_usage_index"),
    ]

    operations = [
        migrations.RunPython(create, drop, elidable=False),
    ]
