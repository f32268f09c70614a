"""The permanent record: client keys, calls and their binary artifacts."""

import hashlib
import os
import secrets
import time
import uuid
from operator import attrgetter

import orjson
from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from openai_django.managers import APART_KEY, CallManager, is_apart_marker

KEY_PREFIX = "sk-od-"


def uuid7():
    """A time-ordered UUID (RFC 9562 version 7): ids sort by creation, which keeps the primary
    key index append-only and lets ``/v1/calls`` page with an ``after`` cursor on the key."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (rand >> 68 & 0x0FFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def hash_key(raw):
    # Keys are 256-bit random secrets, so a plain SHA-256 is enough (no dictionary to defend
    # against) and keeps the per-request lookup to one indexed equality query.
    return hashlib.sha256(raw.encode()).hexdigest()


class RequestBodyAttribute(DeferredAttribute):
    """``call.request_body``: the body, wherever it is kept.

    A large body is kept in its own :class:`RequestBody` row, and the call's column holds a
    marker (managers.REQUEST_BODY_APART_BYTES says why); a call read from the database finds
    the body behind the marker the first time the attribute is read (one query, then kept
    on the instance). A call being built (``_state.adding``) is left as it is: the recorder's
    INSERT binds the marker itself. Assigning the attribute works as for any field.

    Many calls at once: ``Call.objects.prefetch_related("request_body")`` reads the bodies
    kept apart of each batch of calls in one query (only those whose row holds a marker), so
    an export or a repricing of a million calls does not make a query for each large one.
    """

    def __init__(self, field):
        super().__init__(field)
        self.attname = field.attname

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        try:
            value = instance.__dict__[self.attname]
        except KeyError:  # deferred: the ORM reads the column
            value = super().__get__(instance, cls)
        if (type(value) is dict and APART_KEY in value and len(value) == 1
                and not instance._state.adding):  # managers.is_apart_marker, inlined
            value = instance.__dict__[self.attname] = _kept_apart(instance)
        return value

    def __set__(self, instance, value):
        instance.__dict__[self.attname] = value

    # -- prefetch_related("request_body") ----------------------------------------------------

    def is_cached(self, instance):
        """Nothing to read for a call whose column holds its body. (A deferred body counts as
        not read: prefetch_related would otherwise read the attribute of each such call to
        go on, one query a call.)"""
        value = instance.__dict__.get(self.attname, _DEFERRED)
        return value is not _DEFERRED and not (is_apart_marker(value)
                                               and not instance._state.adding)

    def get_prefetch_querysets(self, instances, querysets=None):
        if querysets and len(querysets) != 1:
            raise ValueError("prefetch_related('request_body') takes at most one queryset.")
        queryset = querysets[0] if querysets else RequestBody.objects.all()
        apart = {call.pk for call in instances
                 if is_apart_marker(call.__dict__.get(self.attname))}
        db = queryset._db or instances[0]._state.db or "default"
        queryset = (queryset.using(db).filter(call_id__in=apart).only("call_id", "text")
                    if apart else queryset.none())  # none(): no query
        # The rows land in the call's fields cache under the field's name; the next read of
        # ``call.request_body`` parses the text there (a deferred body's None is never read).
        return (queryset, attrgetter("call_id"), attrgetter("pk"), True, PREFETCHED_BODY, False)


_DEFERRED = object()
PREFETCHED_BODY = "request_body"


def _kept_apart(call):
    cache = call._state.fields_cache
    if PREFETCHED_BODY in cache:
        row = cache.pop(PREFETCHED_BODY)
        text = None if row is None else row.text
    else:
        text = (RequestBody.objects.using(call._state.db or "default").filter(call_id=call.pk)
                .values_list("text", flat=True).first())
    return None if text is None else orjson.loads(text)


class RequestBodyField(models.JSONField):
    """A JSONField read through :class:`RequestBodyAttribute`. The column is the JSONField's
    own (the same type and check), so migrations see a plain JSONField."""

    descriptor_class = RequestBodyAttribute

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


class APIKeyQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class APIKey(models.Model):
    """A key the site issued to one of its users. Only a hash of the secret is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="openai_api_keys",
        verbose_name=_("user"),
        help_text=_("The site user whose calls this key makes."),
    )
    name = models.CharField(_("name"), max_length=100, blank=True,
                            help_text=_("A label to tell keys apart, e.g. 'staging script'."))
    prefix = models.CharField(
        _("prefix"), max_length=16, editable=False,
        help_text=_("The first characters of the key, shown to recognise it."),
    )
    last4 = models.CharField(_("last four"), max_length=4, editable=False)
    hashed_key = models.CharField(_("hashed key"), max_length=64, unique=True, editable=False)
    created = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    metadata_only = models.BooleanField(
        _("metadata only"), default=False,
        help_text=_("Record only metadata for this key's calls: no bodies, no artifacts."),
    )

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created"]

    def __str__(self):
        label = self.masked
        return f"{self.name} ({label})" if self.name else label

    @property
    def masked(self):
        return f"{self.prefix}…{self.last4}"

    @property
    def is_active(self):
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    @classmethod
    def generate(cls, user, name="", **fields):
        """Create a key; returns ``(api_key, raw_secret)``. The secret is not kept."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(
            user=user, name=name, prefix=raw[: len(KEY_PREFIX) + 4], last4=raw[-4:],
            hashed_key=hash_key(raw), **fields,
        )
        return key, raw

    def revoke(self):
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class Call(models.Model):
    """One call to the API, written before the upstream is asked and finished in every outcome."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")

        @classmethod
        def finished(cls):
            return [cls.SUCCEEDED, cls.FAILED, cls.CANCELLED]

    class Outcome(models.TextChoices):
        OK = "ok", _("answered")
        UPSTREAM_ERROR = "upstream_error", _("upstream answered an error")
        UNREACHABLE = "unreachable", _("upstream unreachable")
        TIMEOUT = "timeout", _("upstream timed out")
        BAD_RESPONSE = "bad_response", _("upstream response unreadable")
        STREAM_INCOMPLETE = "stream_incomplete", _("stream ended without [DONE]")
        STREAM_BROKEN = "stream_broken", _("stream broken off")
        CLIENT_DISCONNECTED = "client_disconnected", _("client hung up")
        CANCELLED = "cancelled", _("cancelled")
        LOST = "lost", _("outcome unknown (worker lost)")
        GAVE_UP = "gave_up", _("gave up after retries")
        REJECTED = "rejected", _("rejected by the gateway (invalid request)")
        ERROR = "error", _("gateway error")

    class Mode(models.TextChoices):
        SYNC = "sync", _("sync")
        STREAM = "stream", _("stream")
        ASYNC = "async", _("background")

    class Source(models.TextChoices):
        HTTP = "http", _("HTTP")
        PYTHON = "python", _("Python API")
        REPLAY = "replay", _("replay")

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # Indexed by od_call_usage, which leads with it (no index of its own).
    created = models.DateTimeField(_("created"), default=timezone.now)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    operation = models.CharField(_("operation"), max_length=64,
                                 help_text=_("The spec's operationId, e.g. createChatCompletion."))
    method = models.CharField(_("method"), max_length=8)
    path = models.CharField(_("path"), max_length=512, help_text=_("The upstream path."))
    query = models.CharField(_("query string"), max_length=2048, blank=True)
    model = models.CharField(_("model"), max_length=200, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="openai_calls", verbose_name=_("user"),
        db_index=False,  # od_call_user_created leads with user: a second index is pure cost
    )
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls",
        verbose_name=_("API key"), db_index=False,  # covered by od_call_key_created
    )
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.RUNNING)
    outcome = models.CharField(_("outcome"), max_length=32, choices=Outcome.choices,
                               blank=True, help_text=_("How the call ended, in detail."))
    mode = models.CharField(_("mode"), max_length=8, choices=Mode.choices, default=Mode.SYNC)
    source = models.CharField(_("source"), max_length=8, choices=Source.choices,
                              default=Source.HTTP)
    stream = models.BooleanField(_("stream"), default=False)

    request_headers = models.JSONField(
        _("request headers"), default=dict, blank=True,
        help_text=_("Selected request headers; never Authorization."),
    )
    payload = models.BinaryField(
        _("pending payload"), null=True, blank=True, editable=False,
        help_text=_("The request exactly as it is to be sent, kept only until a background call "
                    "has been performed (what is recorded may be redacted; this is not)."),
    )
    request_body = RequestBodyField(
        _("request body"), null=True, blank=True,
        help_text=_("The JSON body, or the form fields of a multipart body (files are artifacts)."),
    )
    prompt_preview = models.CharField(
        _("prompt"), max_length=300, blank=True,
        help_text=_("The start of the prompt or last user message, for search."),
    )
    response_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    response_headers = models.JSONField(_("response headers"), default=dict, blank=True)
    response_content_type = models.CharField(_("response content type"), max_length=100,
                                             blank=True)
    response_body = models.JSONField(_("response body"), null=True, blank=True)
    response_text = models.TextField(
        _("response text"), blank=True,
        help_text=_("A response that is text but not JSON (srt, vtt, text transcripts)."),
    )
    stream_events = models.JSONField(_("stream events"), null=True, blank=True)
    output_text = models.TextField(
        _("output text"), blank=True,
        help_text=_("The generated text (assembled from a stream, or the first choice)."),
    )
    upstream_request_id = models.CharField(_("upstream request id"), max_length=100, blank=True)
    object_id = models.CharField(
        _("upstream object"), max_length=200, blank=True,
        help_text=_("The upstream object the call created or concerns (file-…, batch_…, "
                    "resp_…), to find every call about it."))
    links = models.JSONField(
        _("linked objects"), null=True, blank=True,
        help_text=_("Other upstream objects the answer names, by role (a batch's input, "
                    "output and error files; a job's training file…)."))
    error = models.JSONField(_("error"), null=True, blank=True)

    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(_("completion tokens"), null=True, blank=True)
    total_tokens = models.PositiveIntegerField(_("total tokens"), null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(
        _("cached tokens"), null=True, blank=True,
        help_text=_("Prompt tokens the upstream served from its cache (billed lower)."))
    reasoning_tokens = models.PositiveIntegerField(
        _("reasoning tokens"), null=True, blank=True,
        help_text=_("Completion tokens a reasoning model spent thinking (billed as output)."))
    cost_usd = models.DecimalField(_("estimated cost (USD)"), max_digits=14, decimal_places=6,
                                   null=True, blank=True)
    latency_ms = models.FloatField(_("latency (ms)"), null=True, blank=True,
                                   help_text=_("From the request reaching the gateway to its end."))
    upstream_latency_ms = models.FloatField(_("upstream latency (ms)"), null=True, blank=True,
                                            help_text=_("Time spent waiting on the upstream."))
    first_byte_ms = models.FloatField(_("time to first byte (ms)"), null=True, blank=True)

    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays",
        verbose_name=_("replay of"), db_index=False,  # partial od_call_replay_of instead
    )
    attempts = models.JSONField(_("attempts"), default=list, blank=True,
                                help_text=_("One entry per attempt at the upstream."))
    attempt_count = models.PositiveSmallIntegerField(_("attempts"), default=0)
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, blank=True)
    request_hash = models.CharField(_("request hash"), max_length=64, blank=True)
    task_id = models.CharField(_("task id"), max_length=64, blank=True)
    holder = models.CharField(
        _("served by"), max_length=100, blank=True,
        help_text=_("host:pid:start of the web process serving a sync or stream call, so a "
                    "call orphaned by a crashed process is found and finished."))
    callback = models.CharField(_("callback task"), max_length=200, blank=True)
    # Many upstreams (openai_django/upstreams.py): which one answered, and every attempt
    # when a fallback was taken ([{"upstream", "model", "status"|"error", "outcome", "ms"}]).
    upstream = models.CharField(_("upstream"), max_length=64, blank=True,
                                help_text=_("The configured upstream whose answer this is."))
    upstream_attempts = models.JSONField(
        _("upstream attempts"), null=True, blank=True,
        help_text=_("Each upstream tried, in order, when the first did not answer (fallbacks); "
                    "empty when the first one did."))

    target_type = models.ForeignKey(
        ContentType, null=True, blank=True, on_delete=models.CASCADE,
        verbose_name=_("attached to (type)"), db_index=False,  # partial od_call_target
    )
    target_id = models.CharField(_("attached to (id)"), max_length=64, blank=True)
    target = GenericForeignKey("target_type", "target_id")

    metadata_only = models.BooleanField(_("metadata only"), default=False,
                                        help_text=_("No bodies or artifacts were recorded."))
    redacted = models.BooleanField(_("redacted"), default=False,
                                   help_text=_("The redact hook changed what was stored."))
    body_purged_at = models.DateTimeField(_("bodies purged"), null=True, blank=True)

    # The site's own labels (openai_django.tagging): never sent upstream.
    tags = models.JSONField(_("tags"), default=list, blank=True,
                            help_text=_("Normalised tags (indexed in CallTag, for filtering)."))
    metadata = models.JSONField(_("metadata"), null=True, blank=True,
                                help_text=_("A flat JSON object the caller attached."))
    session = models.CharField(_("session"), max_length=128, blank=True,
                               help_text=_("An id grouping the calls of one conversation."))

    objects = CallManager()

    class Meta:
        verbose_name = _("call")
        verbose_name_plural = _("calls")
        ordering = ["-created"]
        permissions = [("replay_call", _("Can replay calls"))]
        # Chosen for PostgreSQL at millions of rows (EXPLAIN figures in the README, "Deployment"):
        # every index costs each INSERT, so the foreign keys covered by a composite index get
        # none of their own, and rare values get partial indexes that stay small.
        #
        # ``created`` ascending in each, though the lists are newest first: both databases
        # scan an index backwards, and a new row's entry then goes at the end of its range.
        # In a descending index it goes at the start, and SQLite, which packs cells towards
        # the left when it rebalances, then rebalances the full first page again on most
        # inserts and leaves the index's pages half full (``od_call_op_created``: 39 entries
        # a page against 78). Measured with ``python -m bench.writer_batch_bench 1,10 150``
        # (the schema changed in a copy, two runs each, 2026-12-03): a batch of 10 started +
        # 10 finished calls 226-234 -> 200-206 us a call, WAL frames 54 -> 47 a batch.
        indexes = [
            models.Index(fields=["user", "created"], name="od_call_user_created"),
            models.Index(fields=["api_key", "created"], name="od_call_key_created"),
            models.Index(fields=["operation", "created"], name="od_call_op_created"),
            models.Index(fields=["model", "created"], name="od_call_model_created"),
            # Queued, running, failed and cancelled calls are few; "succeeded" is most rows
            # and is never worth an index scan.
            models.Index(fields=["status", "created"], name="od_call_status_created",
                         condition=~models.Q(status="succeeded")),
            models.Index(fields=["upstream_request_id"], name="od_call_upstream_rid"),
            # Only calls about objects (files, batches, responses...) have one: a partial
            # index that costs the hot chat path nothing.
            models.Index(fields=["object_id", "created"], name="od_call_object",
                         condition=~models.Q(object_id="")),
            models.Index(fields=["replay_of"], name="od_call_replay_of",
                         condition=models.Q(replay_of__isnull=False)),
            models.Index(fields=["target_type", "target_id"], name="od_call_target",
                         condition=models.Q(target_type__isnull=False)),
            # The retention purge's batches: only rows whose bodies are still kept, so each
            # batch is an index range scan however many purged rows lie before it.
            models.Index(fields=["created"], name="od_call_bodies_kept",
                         condition=models.Q(body_purged_at__isnull=True, metadata_only=False)),
            # Newest-first lists, date ranges, and the usage dashboard: its sums read this
            # index alone (a covering scan), never the wide rows with their bodies.
            models.Index(fields=["created", "model", "user", "api_key", "status",
                                 "prompt_tokens", "completion_tokens", "total_tokens",
                                 "cost_usd"], name="od_call_usage"),
            # A session's calls in order; only calls that name a session are in it.
            models.Index(fields=["session", "created"], name="od_call_session",
                         condition=~models.Q(session="")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="od_call_idempotency_unique",
            ),
        ]

    def __str__(self):
        return f"{self.operation} {self.id}"

    @property
    def is_finished(self):
        return self.status in Call.Status.finished()

    @property
    def operation_spec(self):
        from openai_django.spec import get_registry

        return get_registry().operations.get(self.operation)


def artifact_upload_to(instance, filename):
    # Never collide, never overwrite: the call id and the artifact's own id are in the name.
    from openai_django.conf import app_settings

    day = (instance.created or timezone.now()).strftime("%Y/%m/%d")
    safe = os.path.basename(filename) or "artifact"
    return f"{app_settings.ARTIFACT_PREFIX}/{day}/{instance.call_id}/{instance.id.hex}-{safe}"


def artifact_storage():
    # A lazy proxy, not the storage itself: FileField calls this once at import time.
    from openai_django.storage import artifact_storage as proxy

    return proxy


class Artifact(models.Model):
    """A binary part of a call, kept through Django's storage API."""

    class Role(models.TextChoices):
        UPLOAD = "upload", _("uploaded file")
        IMAGE = "image", _("input image")
        MASK = "mask", _("mask")
        AUDIO = "audio", _("audio")
        GENERATED_IMAGE = "generated_image", _("generated image")
        GENERATED_AUDIO = "generated_audio", _("generated audio")
        FILE_CONTENT = "file_content", _("downloaded file content")
        TRANSCRIPT = "transcript", _("transcript")
        RESPONSE = "response", _("response body")

    INPUT_ROLES = (Role.UPLOAD, Role.IMAGE, Role.MASK, Role.AUDIO)

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="artifacts",
                             verbose_name=_("call"))
    role = models.CharField(_("role"), max_length=20, choices=Role.choices)
    field = models.CharField(_("form field"), max_length=64, blank=True,
                             help_text=_("The multipart field it came in, e.g. image or mask."))
    index = models.PositiveSmallIntegerField(_("index"), default=0,
                                             help_text=_("Position among outputs, e.g. image n."))
    name = models.CharField(_("file name"), max_length=255, blank=True)
    file = models.FileField(_("file"), upload_to=artifact_upload_to, storage=artifact_storage,
                            max_length=500, blank=True)
    content_type = models.CharField(_("content type"), max_length=100, blank=True)
    bytes = models.BigIntegerField(_("size (bytes)"), default=0)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    source_url = models.URLField(_("source URL"), max_length=2000, blank=True,
                                 help_text=_("Where a generated image was fetched from."))
    error = models.TextField(_("error"), blank=True,
                             help_text=_("Why the content could not be kept, if it could not."))
    created = models.DateTimeField(_("created"), default=timezone.now)
    purged_at = models.DateTimeField(_("purged"), null=True, blank=True)

    class Meta:
        verbose_name = _("artifact")
        verbose_name_plural = _("artifacts")
        ordering = ["call", "role", "index"]
        indexes = [
            models.Index(fields=["created"], name="od_artifact_created"),
            # The retention purge's batches: artifacts whose file is still stored.
            models.Index(fields=["created"], name="od_artifact_stored",
                         condition=models.Q(purged_at__isnull=True) & ~models.Q(file="")),
        ]

    def __str__(self):
        return f"{self.get_role_display()} {self.name or self.id}"

    @property
    def is_input(self):
        return self.role in self.INPUT_ROLES


class ConcurrencyLease(models.Model):
    """One slot of a concurrency cap, held by a task while it calls the upstream.

    The database backend of :mod:`openai_django.concurrency`, used when no Redis is configured:
    the unique (key, slot) pair makes taking a slot a plain INSERT that at most one process can
    win, on any database, and ``expires_at`` frees the slots of holders that died.
    """

    key = models.CharField(_("key"), max_length=255,
                           help_text=_("What is capped: the upstream, or one model of it."))
    slot = models.PositiveSmallIntegerField(_("slot"))
    token = models.CharField(_("token"), max_length=64, unique=True)
    acquired_at = models.DateTimeField(_("acquired"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"))

    class Meta:
        verbose_name = _("concurrency lease")
        verbose_name_plural = _("concurrency leases")
        ordering = ["key", "slot"]
        constraints = [
            models.UniqueConstraint(fields=["key", "slot"], name="od_lease_key_slot"),
        ]

    def __str__(self):
        return f"{self.key} #{self.slot}"


class CallTag(models.Model):
    """One tag of one call: the index that filters calls by tag (see openai_django.tagging).

    A row per (call, tag) rather than a delimited text column: an equality on ``tag`` is an
    index range scan on SQLite and PostgreSQL alike, where ``LIKE '%,tag,%'`` reads every row
    (figures in the README, "Tags, metadata and sessions"). ``(tag, call)`` gives a tag's
    calls newest first (call ids are time-ordered) and answers "has this call that tag";
    ``created`` is the call's, copied so that a period's spend per tag starts from this
    table's ``(created, tag)`` index.
    """

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="tag_rows",
                             verbose_name=_("call"))  # its own index: deletes of calls
    tag = models.CharField(_("tag"), max_length=64)
    created = models.DateTimeField(_("created"))

    class Meta:
        verbose_name = _("call tag")
        verbose_name_plural = _("call tags")
        constraints = [
            models.UniqueConstraint(fields=["tag", "call"], name="od_calltag_tag_call"),
        ]
        indexes = [
            models.Index(fields=["created", "tag"], name="od_calltag_created_tag"),
        ]

    def __str__(self):
        return self.tag


class RequestBody(models.Model):
    """A call's request body too large for the call's own row, as JSON text.

    Written with the call's row, in the same transaction, before the upstream is asked (the
    record stays write-ahead); read through ``call.request_body``; deleted with the call and
    when retention purges the call's bodies. Text rather than JSON: what the recorder
    serialised once is stored as it is, without the database parsing or checking it again.
    """

    call = models.OneToOneField(Call, on_delete=models.CASCADE, primary_key=True,
                                related_name="+", verbose_name=_("call"))
    text = models.TextField(_("JSON text"))

    class Meta:
        verbose_name = _("request body kept apart")
        verbose_name_plural = _("request bodies kept apart")
        default_permissions = ()

    def __str__(self):
        return f"request body of {self.call_id}"


class CallFeedback(models.Model):
    """The call's own user's verdict on it: one per call, replaced when given again."""

    call = models.OneToOneField(Call, on_delete=models.CASCADE, related_name="feedback",
                                primary_key=True, verbose_name=_("call"))
    score = models.FloatField(_("score"), help_text=_("From -1 (bad) to 1 (good)."))
    comment = models.TextField(_("comment"), blank=True)
    created = models.DateTimeField(_("given"), default=timezone.now)
    updated = models.DateTimeField(_("updated"), default=timezone.now)

    class Meta:
        verbose_name = _("call feedback")
        verbose_name_plural = _("call feedback")
        indexes = [models.Index(fields=["score"], name="od_feedback_score")]

    def __str__(self):
        return f"{self.score:+g}"


class UpstreamHealth(models.Model):
    """The circuit breaker's shared state of one upstream (``CIRCUIT_BREAKER`` backend "db";
    with Redis the same fields live in a Redis hash)."""

    name = models.CharField(_("upstream"), max_length=64, primary_key=True)
    failures = models.PositiveIntegerField(_("failures in a row"), default=0)
    opened_until = models.DateTimeField(_("open until"), null=True, blank=True)
    times_opened = models.PositiveIntegerField(_("times opened"), default=0)
    last_error = models.CharField(_("last error"), max_length=300, blank=True)
    last_failure_at = models.DateTimeField(_("last failure"), null=True, blank=True)
    last_success_at = models.DateTimeField(_("last success"), null=True, blank=True)

    class Meta:
        verbose_name = _("upstream health")
        verbose_name_plural = _("upstream health")

    def __str__(self):
        return self.name


# Budgets and rate limits (openai_django/allowances.py), registered with the app's models.
from openai_django.allowances import (  # noqa: E402, F401
    Allowance,
    BudgetReservation,
    BudgetWindow,
    RateWindow,
)
