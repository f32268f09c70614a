"""Tags, metadata and sessions: the site's own labels on a call, and the user's feedback.

A client labels a call with three request headers (or the Python API's ``call_tags=``,
``call_metadata=`` and ``call_session=`` keywords); the gateway checks them, keeps them on the
call and never sends them upstream:

``OpenAI-Django-Tags: checkout, summary``
    Comma-separated; each tag is trimmed and lower-cased, at most 64 characters of
    ``a-z 0-9 _ . : / = @ + -``; empty items are skipped, repeats dropped (first one kept, in
    order), at most ``TAGS_MAX`` (20) tags.
``OpenAI-Django-Metadata: {"customer": "c_42", "ab_test": 3, "beta": true}``
    A JSON object of at most ``METADATA_MAX_BYTES`` (4096) bytes, flat: keys of 1 to 64
    characters, values a string (at most 512 characters), a number, a boolean or null; a key
    given twice is refused.
``OpenAI-Django-Session: 7f0c3e2a-…``
    An id grouping a conversation's calls: 1 to 128 characters of
    ``A-Z a-z 0-9 _ . : / = @ + -`` (case kept).

A bad value is a 400 ``invalid_request_error`` with ``param`` naming the header (or the
keyword), before anything is sent; the call is then recorded as rejected (like every request
of a valid key the gateway refuses) with none of the three, and no tag rows.

Tags are stored twice, in one transaction: as a list on the call (what pages and exports
show) and as one :class:`~openai_django.models.CallTag` row per tag (what filters read, by
index, on any database).
"""

import json
import math
import re

import orjson
from django.db import connections, router, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from openai_django.conf import app_settings
from openai_django.errors import InvalidRequest

TAGS_HEADER = "OpenAI-Django-Tags"
METADATA_HEADER = "OpenAI-Django-Metadata"
SESSION_HEADER = "OpenAI-Django-Session"
HEADER_PREFIX = "openai-django-"  # never forwarded upstream, whatever FORWARD_HEADERS says
META_TAGS, META_METADATA, META_SESSION = (
    "HTTP_OPENAI_DJANGO_TAGS", "HTTP_OPENAI_DJANGO_METADATA", "HTTP_OPENAI_DJANGO_SESSION")

TAG_MAX_LENGTH = 64
TAGS_HEADER_MAX = 4096  # refused before it is split: 20 tags of 64 characters fit well within
SESSION_MAX_LENGTH = 128
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
FEEDBACK_COMMENT_MAX = 4000

_TAG = re.compile(r"[a-z0-9_.:/=@+\-]{1,64}")
_SESSION = re.compile(r"[A-Za-z0-9_.:/=@+\-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY_END = re.compile(rb'"\s*:')


# -- parsing -----------------------------------------------------------------------------


def parse_tags(value, param=TAGS_HEADER):
    """A normalised list of tags from a comma-separated string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        if len(value) > TAGS_HEADER_MAX:
            raise InvalidRequest(f"{param} is {len(value)} characters long; at most "
                                 f"{TAGS_HEADER_MAX} are read.", param=param,
                                 code="invalid_tags")
        items = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise InvalidRequest(f"{param} must be a comma-separated string or a list of strings, "
                             f"not {type(value).__name__}.", param=param, code="invalid_tags")
    tags = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"Each tag of {param} must be a string, not "
                                 f"{type(item).__name__}.", param=param, code="invalid_tags")
        tag = item.strip().lower()
        if not tag:
            continue
        if not _TAG.fullmatch(tag):
            shown = tag[:TAG_MAX_LENGTH] + ("…" if len(tag) > TAG_MAX_LENGTH else "")
            raise InvalidRequest(
                f"The tag {shown!r} of {param} is not valid: a tag is 1 to {TAG_MAX_LENGTH} "
                f"characters of a-z, 0-9 and _ . : / = @ + -.", param=param,
                code="invalid_tags")
        if tag not in tags:
            tags.append(tag)
    limit = app_settings.TAGS_MAX
    if len(tags) > limit:
        raise InvalidRequest(f"{param} names {len(tags)} tags; at most {limit} are allowed.",
                             param=param, code="invalid_tags")
    return tags


def parse_metadata(value, param=METADATA_HEADER):
    """A flat metadata dict from a JSON text (the header) or a dict (the Python API)."""
    if value is None:
        return None
    limit = app_settings.METADATA_MAX_BYTES
    if isinstance(value, (str, bytes)):
        raw = value
        if isinstance(value, str):
            # WSGI hands a header's bytes over as latin-1 text: back to the bytes, read as
            # UTF-8 JSON (text beyond latin-1 can only come from Python: its UTF-8).
            try:
                raw = value.encode("latin-1")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "surrogatepass")
        if len(raw) > limit:
            raise InvalidRequest(f"{param} is {len(raw)} bytes; at most {limit} are allowed.",
                                 param=param, code="invalid_metadata")
        # The body's own duplicate-key check (invocation imports this module: not at the top).
        from openai_django.invocation import DuplicateKey, unique_keys

        try:
            data = orjson.loads(raw)  # strict: no NaN, valid UTF-8
            if isinstance(data, dict) and len(_KEY_END.findall(raw)) != len(data):
                # Every key ends with '"' and ':', so as many such ends as keys means no key
                # came twice; otherwise (a repeat, or '":' inside a value) look properly.
                json.loads(raw, object_pairs_hook=unique_keys)
        except DuplicateKey as exc:
            raise InvalidRequest(f"{param} gives the key {exc.key!r} more than once.",
                                 param=param, code="invalid_metadata") from None
        except ValueError as exc:
            raise InvalidRequest(f"{param} is not valid JSON ({exc}).", param=param,
                                 code="invalid_metadata") from None
    else:
        data = value
    if not isinstance(data, dict):
        raise InvalidRequest(f"{param} must be a JSON object, not {type(data).__name__}.",
                             param=param, code="invalid_metadata")
    for key, item in data.items():
        if not isinstance(key, str) or not 1 <= len(key) <= METADATA_KEY_MAX \
                or _CONTROL.search(key):
            raise InvalidRequest(f"The key {str(key)[:METADATA_KEY_MAX]!r} of {param} is not "
                                 f"valid: keys are 1 to {METADATA_KEY_MAX} characters, no "
                                 f"control characters.", param=param, code="invalid_metadata")
        if isinstance(item, str):
            if len(item) > METADATA_VALUE_MAX:
                raise InvalidRequest(f"The value of {key!r} in {param} is {len(item)} "
                                     f"characters; at most {METADATA_VALUE_MAX}.",
                                     param=param, code="invalid_metadata")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"The value of {key!r} in {param} is not a finite "
                                     f"number.", param=param, code="invalid_metadata")
        elif isinstance(item, int) and not isinstance(item, bool) \
                and not -(2 ** 63) <= item < 2 ** 63:
            raise InvalidRequest(f"The value of {key!r} in {param} is an integer beyond 64 "
                                 f"bits.", param=param, code="invalid_metadata")
        elif item is not None and not isinstance(item, (bool, int)):
            raise InvalidRequest(f"The value of {key!r} in {param} is a "
                                 f"{type(item).__name__}: metadata is flat (strings, numbers, "
                                 f"booleans or null).", param=param, code="invalid_metadata")
    if not isinstance(value, (str, bytes)):
        size = len(orjson.dumps(data))
        if size > limit:
            raise InvalidRequest(f"{param} is {size} bytes as JSON; at most {limit} are "
                                 f"allowed.", param=param, code="invalid_metadata")
    return data


def parse_session(value, param=SESSION_HEADER):
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, str):
            raise InvalidRequest(f"{param} must be a string.", param=param,
                                 code="invalid_session")
    value = value.strip()
    if not value:
        return ""
    if not _SESSION.fullmatch(value):
        raise InvalidRequest(f"{param} is not a valid session id: 1 to {SESSION_MAX_LENGTH} "
                             f"characters of A-Z, a-z, 0-9 and _ . : / = @ + -.", param=param,
                             code="invalid_session")
    return value


def from_meta(invocation, meta):
    """Read the three headers of a request into ``invocation`` (a few dict look-ups when the
    request sends none of them)."""
    tags, metadata, session = (meta.get(META_TAGS), meta.get(META_METADATA),
                               meta.get(META_SESSION))
    if tags is None and metadata is None and session is None:
        return
    labels = (parse_tags(tags), parse_metadata(metadata), parse_session(session))
    invocation.tags, invocation.metadata, invocation.session = labels


def from_keywords(invocation, tags, metadata, session, headers):
    """The Python API's keywords (or the same headers given in ``headers=``) into
    ``invocation``; the keywords win over the headers."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    if tags is None and TAGS_HEADER.lower() in lowered:
        tags = parse_tags(lowered[TAGS_HEADER.lower()])
    else:
        tags = parse_tags(tags, "call_tags")
    if metadata is None and METADATA_HEADER.lower() in lowered:
        metadata = parse_metadata(lowered[METADATA_HEADER.lower()])
    else:
        metadata = parse_metadata(metadata, "call_metadata")
    if session is None and SESSION_HEADER.lower() in lowered:
        session = parse_session(lowered[SESSION_HEADER.lower()])
    else:
        session = parse_session(session, "call_session")
    invocation.tags, invocation.metadata, invocation.session = tags, metadata, session


def forwardable(headers):
    """``headers`` without this package's own (``OpenAI-Django-*``)."""
    return {k: v for k, v in headers.items() if not k.lower().startswith(HEADER_PREFIX)}


# -- the tag index -----------------------------------------------------------------------


_SQL = {}  # (vendor, statement, number of tags) -> SQL, built once


def _tag_rows_sql(connection, count):
    from openai_django.models import CallTag

    key = (connection.vendor, "rows", count)
    if key not in _SQL:
        quote = connection.ops.quote_name
        meta = CallTag._meta
        columns = ", ".join(quote(meta.get_field(name).column)
                            for name in ("call", "tag", "created"))
        _SQL[key] = (f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES "
                     + ", ".join(["(%s, %s, %s)"] * count))
    return _SQL[key]


def _with_tag_rows_sql(connection, call_sql, count):
    """PostgreSQL: the call's INSERT and its tag rows' as one statement (a data-modifying
    ``WITH``), atomic by itself, one round trip like an untagged call's."""
    from openai_django.models import Call, CallTag

    key = (connection.vendor, call_sql, count)
    if key not in _SQL:
        quote = connection.ops.quote_name
        meta = CallTag._meta
        columns = ", ".join(quote(meta.get_field(name).column)
                            for name in ("call", "tag", "created"))
        pk = quote(Call._meta.pk.column)
        values = ", ".join(["(%s)"] * count)
        _SQL[key] = (f"WITH od_new AS ({call_sql} RETURNING {pk}) "
                     f"INSERT INTO {quote(meta.db_table)} ({columns}) "
                     f"SELECT od_new.{pk}, od_tags.tag, %s FROM od_new, "
                     f"(VALUES {values}) AS od_tags(tag)")
    return _SQL[key]


SQLITE_TRIGGER = "od_call_tag_rows"  # migration 0009


def sqlite_trigger_sql(call_meta, tag_meta, quote):
    """The ``CREATE TRIGGER`` of a call's tag rows, for these models' tables and columns."""
    tags, pk, created = (quote(call_meta.get_field(n).column) for n in ("tags", "id", "created"))
    columns = ", ".join(quote(tag_meta.get_field(n).column) for n in ("call", "tag", "created"))
    return (f"CREATE TRIGGER IF NOT EXISTS {SQLITE_TRIGGER} AFTER INSERT ON "
            f"{quote(call_meta.db_table)} "
            f"WHEN NEW.{tags} IS NOT NULL AND NEW.{tags} <> '[]' BEGIN "
            f"INSERT INTO {quote(tag_meta.db_table)} ({columns}) "
            f"SELECT NEW.{pk}, value, NEW.{created} FROM json_each(NEW.{tags}); END")


def ensure_sqlite_trigger(sender=None, using="default", **kwargs):
    """``post_migrate``: puts the trigger back after any migration. SQLite cannot alter most
    columns in place, so Django rebuilds the call table for a later migration's new field
    (0010's ``upstream_attempts`` did), and a rebuilt table has lost its triggers."""
    from openai_django.models import Call, CallTag

    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    tables = set(connection.introspection.table_names())
    if not {Call._meta.db_table, CallTag._meta.db_table} <= tables:
        return  # migrated back before the tag rows
    with connection.cursor() as cursor:
        cursor.execute(sqlite_trigger_sql(Call._meta, CallTag._meta, connection.ops.quote_name))
    connection.od_tag_trigger = True


def _sqlite_trigger(connection):
    """Whether this SQLite database has the trigger that writes a call's tag rows (looked up
    once per connection)."""
    found = getattr(connection, "od_tag_trigger", None)
    if found is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = %s",
                           [SQLITE_TRIGGER])
            found = cursor.fetchone() is not None
        connection.od_tag_trigger = found
    return found


def record_with_tags(manager, call, alias):
    """Insert ``call`` and its tag rows together: a call is never stored without the rows
    that find it by tag, nor rows without their call. On PostgreSQL one statement does both
    (through the group-commit writer when it is on); on SQLite the call's INSERT does, by
    the trigger of migration 0009; elsewhere (or on PostgreSQL when the site listens to the
    model's signals: the ORM saves) one transaction of two statements."""
    from openai_django.models import CallTag

    connection = connections[alias]
    meta = CallTag._meta
    created = meta.get_field("created").get_db_prep_save(call.created, connection)
    tags = list(call.tags)
    if (connection.vendor == "postgresql" and not manager._orm_only()
            and manager.apart(call, connection) is None):  # a large body: two statements
        call_sql, plan = manager._plan(connection, "insert", None)
        params = [convert(get(call)) for get, convert in plan]
        manager._execute(alias, _with_tag_rows_sql(connection, call_sql, len(tags)),
                         [*params, created, *tags], "insert")
        call._state.adding = False
        call._state.db = alias
        return call
    if connection.vendor == "sqlite" and _sqlite_trigger(connection):
        # The migration's trigger writes the rows within the call's own INSERT.
        return manager._insert(call, alias)
    call_id = meta.get_field("call").get_db_prep_save(call.pk, connection)
    with transaction.atomic(using=alias):
        manager._insert(call, alias)
        with connection.cursor() as cursor:
            cursor.execute(_tag_rows_sql(connection, len(tags)),
                           [value for tag in tags for value in (call_id, tag, created)])
    return call


TAG_ORDER = "-tag_rows__call_id"  # newest first by the tag index (ids are time-ordered)


def with_tags(queryset, tags):
    """The calls of ``queryset`` that have every one of ``tags``: a join on the first tag's
    index rows, and an indexed "has it" probe per other tag.

    Order the result by :data:`TAG_ORDER` (the call's id, read from the tag's index) for a
    newest-first page: the join then reads the tag's rows in order and stops at the page's
    end, whether the tag is on most calls or on a few. (``pk IN (tag's call ids)`` ordered
    by date had to fetch and sort every call with a common tag: 250 ms at 100k calls on
    SQLite, against 15 ms this way.)
    """
    from django.db.models import Exists, OuterRef

    from openai_django.models import CallTag

    if not tags:
        return queryset
    first, *others = tags
    queryset = queryset.filter(tag_rows__tag=first)
    for tag in others:
        queryset = queryset.filter(Exists(CallTag.objects.filter(call=OuterRef("pk"), tag=tag)))
    return queryset


def session_calls(session, queryset=None):
    """A session's calls, oldest first."""
    from openai_django.models import Call

    queryset = queryset if queryset is not None else Call.objects.all()
    return queryset.filter(session=session).order_by("created", "id")


def spend_per_day_and_tag(low, high, using="default"):
    """``{(day, tag): {"calls", "tokens", "cost"}}`` for calls created in ``[low, high)``:
    one aggregate over the period's tag rows (their ``(created, tag)`` index), joined to
    their calls by primary key for the tokens and the cost."""
    from openai_django.admin.usage import day_expression
    from openai_django.models import CallTag

    rows = (CallTag.objects.using(using).filter(created__gte=low, created__lt=high)
            .order_by().annotate(day=day_expression(using)).values("day", "tag")
            .annotate(calls=Count("call_id"), tokens=Sum("call__total_tokens"),
                      cost=Sum("call__cost_usd")))
    return {(row["day"], row["tag"]): {"calls": row["calls"], "tokens": row["tokens"] or 0,
                                       "cost": row["cost"] or 0} for row in rows}


# -- feedback ----------------------------------------------------------------------------


def parse_feedback(data):
    """``(score, comment)`` of a feedback body, or :class:`InvalidRequest` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object: {\"score\": ..., "
                             "\"comment\": ...}.")
    unknown = sorted(set(data) - {"score", "comment"})
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}",
                             param=unknown[0])
    score = data.get("score")
    if score is None:
        raise InvalidRequest("'score' is required: a number from -1 to 1.", param="score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) \
            or not math.isfinite(score) or not -1 <= score <= 1:
        raise InvalidRequest(f"'score' must be a number from -1 to 1, not {score!r}.",
                             param="score")
    comment = data.get("comment")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise InvalidRequest("'comment' must be a string.", param="comment")
    if len(comment) > FEEDBACK_COMMENT_MAX:
        raise InvalidRequest(f"'comment' is {len(comment)} characters; at most "
                             f"{FEEDBACK_COMMENT_MAX}.", param="comment")
    if "\x00" in comment:
        raise InvalidRequest("'comment' must not contain NUL characters.", param="comment")
    return float(score), comment


def give_feedback(call, score, comment):
    """Record (or replace) the feedback on ``call``; returns the :class:`CallFeedback`."""
    from openai_django.models import CallFeedback

    now = timezone.now()
    alias = router.db_for_write(CallFeedback)
    with transaction.atomic(using=alias):
        feedback, created = CallFeedback.objects.using(alias).select_for_update().get_or_create(
            call=call, defaults={"score": score, "comment": comment, "created": now,
                                 "updated": now})
        if not created:
            feedback.score, feedback.comment, feedback.updated = score, comment, now
            feedback.save(update_fields=["score", "comment", "updated"])
    return feedback


def record_feedback(call, score, comment=""):
    """Python's way to record (or replace) a call's feedback, checked like the endpoint's
    body: ``record_feedback(call, -1, "Wrong answer")``; raises :class:`InvalidRequest`."""
    score, comment = parse_feedback({"score": score, "comment": comment})
    return give_feedback(call, score, comment)


def feedback_to_dict(feedback):
    if feedback is None:
        return None
    return {
        "object": "call.feedback",
        "call_id": str(feedback.call_id),
        "score": feedback.score,
        "comment": feedback.comment,
        "created": int(feedback.created.timestamp()),
        "updated": int(feedback.updated.timestamp()),
    }


def feedback_of(call):
    """The call's feedback, or ``None`` (no query when it was selected with the call)."""
    from openai_django.models import CallFeedback

    try:
        return call.feedback
    except CallFeedback.DoesNotExist:
        return None
