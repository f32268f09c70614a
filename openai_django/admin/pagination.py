"""A paginator that never counts a million rows.

Django's admin asks its paginator for ``count`` on every changelist page, which is a
``SELECT COUNT(*)`` over the filtered table: seconds on a large log. This one reads the page
asked for (one row more, to know whether another follows) and counts only a few pages ahead of
it (``SELECT COUNT(*) FROM (SELECT created ... LIMIT n OFFSET m)``), so the admin sees the
next ``lookahead`` pages and "more than N calls"; moving on shows the pages after those. The
rows of a page are read once, and when every match fits on the first page (a rare word, a
narrow filter) nothing is counted at all. For the unfiltered list the total is estimated from
the database's statistics, without a scan.
"""

import logging

from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.utils.functional import cached_property

logger = logging.getLogger("openai_django.admin")


class LookaheadPaginator(Paginator):
    """``count`` is exact when the end of the list is within ``lookahead`` pages of the page
    asked for (``page_hint``); beyond that it stops there and ``capped`` is true."""

    lookahead = 10
    # What the count selects: the ordering column, not the id. Every index of the call log
    # ends with it, so the index that serves the filter answers without reading table rows.
    count_column = "created"

    def __init__(self, object_list, per_page, *args, page_hint=1, lookahead=None, **kwargs):
        super().__init__(object_list, per_page, *args, **kwargs)
        try:
            self.page_hint = max(1, int(page_hint or 1))
        except (TypeError, ValueError):
            self.page_hint = 1
        if lookahead is not None:
            self.lookahead = lookahead
        self.capped = False
        self.complete_rows = None  # every matching row, when they all fit on page one
        self._rows = None  # the rows of page_hint, read while counting

    @cached_property
    def count(self):
        queryset = self.object_list
        per_page = self.per_page
        offset = (self.page_hint - 1) * per_page
        rows = list(queryset[offset: offset + per_page + 1])
        if len(rows) <= per_page and (rows or self.page_hint == 1):
            self._rows = rows
            if self.page_hint == 1:
                self.complete_rows = rows
            return offset + len(rows)
        if not rows:  # past the end: count from the start, so the page is seen as invalid
            offset, per_page_rows = 0, 0
        else:
            self._rows, per_page_rows = rows[:per_page], per_page
        start = offset + per_page_rows
        limit = per_page * self.lookahead
        column = self.count_column or queryset.model._meta.pk.attname
        ahead = queryset.order_by().values(column)[start: start + limit + 1].count()
        if ahead > limit:
            self.capped = True
            return start + limit
        return start + ahead

    def page(self, number):
        number = self.validate_number(number)
        if number == self.page_hint and self._rows is not None:
            return self._get_page(self._rows, number, self)
        return super().page(number)

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


# The name this class had first (kept for imports of it).
CappedCountPaginator = LookaheadPaginator


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
