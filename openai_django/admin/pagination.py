"""A paginator that never counts a million rows.

Django's admin asks its paginator for ``count`` on every changelist page, which is a
``SELECT COUNT(*)`` over the filtered table: seconds on a large log. This one counts at most
``cap`` rows (``SELECT COUNT(*) FROM (SELECT id ... LIMIT cap+1)``, which stops early), so only
the first ``cap / per_page`` pages can be reached by number; beyond that the admin narrows with
filters, search and dates, which all use indexes. For the unfiltered table it also shows an
estimate of the total from the database's own statistics, without scanning.
"""

import logging

from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.utils.functional import cached_property

logger = logging.getLogger("openai_django.admin")

DEFAULT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """``count`` is exact up to ``cap`` and ``cap`` beyond it (``capped`` is then true)."""

    cap = DEFAULT_CAP

    def __init__(self, object_list, per_page, *args, cap=None, **kwargs):
        super().__init__(object_list, per_page, *args, **kwargs)
        if cap is not None:
            self.cap = cap
        self.capped = False

    @cached_property
    def count(self):
        queryset = self.object_list
        bounded = queryset.order_by().values("pk")[: self.cap + 1]
        counted = bounded.count()
        if counted > self.cap:
            self.capped = True
            return self.cap
        return counted

    @cached_property
    def estimate(self):
        """An estimate of the full number of rows when the list is unfiltered and capped, from
        table statistics (PostgreSQL ``reltuples``) or SQLite's largest ``rowid``; else None."""
        if not self.capped:
            return None
        queryset = self.object_list
        if queryset.query.where:
            return None
        return table_estimate(queryset.model, queryset.db)


def table_estimate(model, using="default"):
    connection = connections[using]
    table = model._meta.db_table
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [connection.ops.quote_name(table)])
            elif connection.vendor == "sqlite":
                # Rows are appended with growing rowids; MAX(rowid) is one b-tree seek.
                cursor.execute(f"SELECT MAX(rowid) FROM {connection.ops.quote_name(table)}")
            else:
                return None
            row = cursor.fetchone()
    except DatabaseError:
        logger.debug("No row estimate for %s", table, exc_info=True)
        return None
    value = row[0] if row else None
    return int(value) if value and value > 0 else None
