"""Retention: forget bodies, artifacts and whole records once they are older than the settings say.

``OPENAI_DJANGO["RETENTION"] = {"bodies": days, "artifacts": days, "metadata": days}`` (each
``None`` to keep forever). Applied by :func:`purge`, which ``manage.py openai_purge`` and the
periodic Celery task :func:`purge_expired_task` call:

* **bodies**: calls created before the cutoff lose what was sent and answered
  (``request_body``, a large one's own ``RequestBody`` row too, ``prompt_preview``,
  ``response_body``, ``response_text``, ``stream_events``, ``output_text``, ``payload``) and
  get ``body_purged_at``. Artifacts that are copies of a body (a large response kept as a
  file, a transcript) go with them: otherwise the answer would outlive the retention through
  its file.
* **artifacts**: stored files created before the cutoff are deleted from the storage; the row
  stays (name, size, SHA-256) with ``purged_at`` set.
* **metadata**: calls created before the cutoff are deleted, with their artifacts and files.
  Metadata may outlive bodies: usage and cost reports keep working after the prompts are gone.

Why it is built this way:

* It works in bounded batches of primary keys, oldest first, so it runs at millions of rows
  without loading them, holds short transactions, and can be interrupted and rerun at any time.
  Partial indexes on the not-yet-purged rows (see ``models.py``) keep each batch an index range
  scan however many purged rows lie before it.
* Files are deleted *before* their rows are marked: if the storage fails half-way, the rows are
  still unmarked and the next run tries again (deleting a missing file is a no-op in Django's
  storages), so no file is left behind that no row points to. A batch with a storage failure
  stops that phase and is reported, rather than looping on the same rows.
* Two purges running at once (two beat schedulers by mistake) are harmless: every step is
  idempotent.
"""

import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.retention")

BATCH_SIZE = 500
KINDS = ("bodies", "artifacts", "metadata")

# What a body purge clears, and to what.
BODY_FIELDS = {
    "request_body": None,
    "prompt_preview": "",
    "response_body": None,
    "response_text": "",
    "stream_events": None,
    "output_text": "",
    "payload": None,
}


def body_artifact_roles():
    """Artifact roles that are copies of a body and go with it."""
    from openai_django.models import Artifact

    return [Artifact.Role.RESPONSE, Artifact.Role.TRANSCRIPT]


@dataclass
class PurgeReport:
    """What one run did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    now: object = None
    cutoffs: dict = field(default_factory=dict)
    bodies: int = 0
    artifacts: int = 0
    metadata: int = 0
    errors: list = field(default_factory=list)

    def as_dict(self):
        data = asdict(self)
        data["now"] = self.now.isoformat() if self.now else None
        data["cutoffs"] = {k: (v.isoformat() if v else None) for k, v in self.cutoffs.items()}
        return data

    def __str__(self):
        verb = "would purge" if self.dry_run else "purged"
        parts = [(f"{verb}: bodies of {self.bodies} calls, {self.artifacts} artifact files, "
                  f"{self.metadata} calls deleted")]
        for kind in KINDS:
            cutoff = self.cutoffs.get(kind)
            parts.append(f"  {kind}: " + (f"older than {cutoff.isoformat()}" if cutoff
                                          else "kept forever"))
        parts += [f"  error: {error}" for error in self.errors]
        return "\n".join(parts)


def retention_days():
    """The ``RETENTION`` setting with every kind present (``None`` = keep forever)."""
    configured = app_settings.RETENTION or {}
    return {kind: configured.get(kind) for kind in KINDS}


def cutoffs(now=None):
    """The creation time before which each kind is purged (``None``: kept forever)."""
    now = now or timezone.now()
    return {kind: (None if days is None else now - timedelta(days=days))
            for kind, days in retention_days().items()}


def purge(now=None, dry_run=False, batch_size=BATCH_SIZE):
    """Apply the retention settings; returns a :class:`PurgeReport`."""
    now = now or timezone.now()
    report = PurgeReport(dry_run=dry_run, now=now, cutoffs=cutoffs(now))
    # Deleting rows first spares purging the bodies of rows about to go.
    if report.cutoffs["metadata"] is not None:
        report.metadata = _purge_metadata(report, report.cutoffs["metadata"], batch_size)
    if report.cutoffs["bodies"] is not None:
        report.bodies = _purge_bodies(report, report.cutoffs["bodies"], batch_size)
    if dry_run:
        report.artifacts = _count_artifact_files(report.cutoffs)
    elif report.cutoffs["artifacts"] is not None:
        report.artifacts += _purge_artifact_files(report, report.cutoffs["artifacts"],
                                                  batch_size)
    logger.info("Retention %s", str(report).replace("\n", ";"))
    return report


def _batches(queryset, batch_size):
    """Primary keys of ``queryset``, oldest first, a batch at a time.

    Each batch is a fresh query: rows handled by the previous batch no longer match, so no
    offset is needed and rows added meanwhile are simply picked up.
    """
    while True:
        ids = list(queryset.order_by("created").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        if len(ids) < batch_size:
            return


def _expired_bodies(cutoff):
    from openai_django.models import Call

    return Call.objects.filter(created__lt=cutoff, body_purged_at__isnull=True,
                               metadata_only=False)


def _stored_artifacts():
    from openai_django.models import Artifact

    return Artifact.objects.filter(purged_at__isnull=True).exclude(file="")


def _purge_metadata(report, cutoff, batch_size):
    from openai_django.models import Call

    expired = Call.objects.filter(created__lt=cutoff)
    if report.dry_run:
        return expired.count()
    deleted = 0
    for ids in _batches(expired, batch_size):
        # Files first (see the module docstring), then the rows; the post_delete receiver
        # then finds no file left to delete.
        if _delete_files(report, _stored_artifacts().filter(call_id__in=ids)) is False:
            break
        with transaction.atomic():
            _, per_model = Call.objects.filter(pk__in=ids).delete()
        deleted += per_model.get(Call._meta.label, 0)
    return deleted


def _purge_bodies(report, cutoff, batch_size):
    from openai_django.models import Call, RequestBody

    expired = _expired_bodies(cutoff)
    if report.dry_run:
        if report.cutoffs["metadata"] is not None:
            # Rows the metadata phase would delete are not counted twice.
            expired = expired.filter(created__gte=report.cutoffs["metadata"])
        return expired.count()
    purged = 0
    for ids in _batches(expired, batch_size):
        copies = _stored_artifacts().filter(call_id__in=ids, role__in=body_artifact_roles())
        files = _delete_files(report, copies)
        if files is False:
            break
        report.artifacts += files
        with transaction.atomic():
            purged += Call.objects.filter(pk__in=ids).update(body_purged_at=report.now,
                                                             **BODY_FIELDS)
            RequestBody.objects.filter(call_id__in=ids).delete()
    return purged


def _count_artifact_files(cutoffs):
    """How many stored files a run would delete, each counted once (dry run)."""
    from django.db.models import Q

    condition = Q(pk__in=[])
    if cutoffs["artifacts"] is not None:
        condition |= Q(created__lt=cutoffs["artifacts"])
    if cutoffs["bodies"] is not None:
        condition |= Q(role__in=body_artifact_roles(), call__in=_expired_bodies(cutoffs["bodies"]))
    files = _stored_artifacts().filter(condition)
    if cutoffs["metadata"] is not None:
        files = files.filter(call__created__gte=cutoffs["metadata"])
    return files.count()


def _purge_artifact_files(report, cutoff, batch_size):
    expired = _stored_artifacts().filter(created__lt=cutoff)
    purged = 0
    for ids in _batches(expired, batch_size):
        files = _delete_files(report, _stored_artifacts().filter(pk__in=ids))
        if files is False:
            break
        purged += files
    return purged


def _delete_files(report, artifacts):
    """Delete the stored files of ``artifacts`` and mark them purged.

    Returns how many were purged, or ``False`` if the storage refused one (the caller stops).
    """
    from openai_django.models import Artifact

    done, failed = [], False
    for artifact in artifacts.only("pk", "file", "call_id"):
        try:
            artifact.file.storage.delete(artifact.file.name)
        except Exception as exc:
            logger.error("Could not delete artifact file %s of call %s: %s",
                         artifact.file.name, artifact.call_id, exc)
            report.errors.append(f"artifact {artifact.pk}: {type(exc).__name__}: {exc}")
            failed = True
            break
        done.append(artifact.pk)
    if done:
        Artifact.objects.filter(pk__in=done).update(file="", purged_at=report.now)
    return False if failed else len(done)


@shared_task(name="openai_django.retention.purge_expired", ignore_result=True)
def purge_expired_task():
    """The periodic purge (schedule it with celery beat; see the deployment notes).

    Returns the report as a dict for ``celery call``/logs; results are not stored.
    """
    return purge().as_dict()
