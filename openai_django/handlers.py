"""Receivers the app installs for itself."""

from django.db.models.signals import post_delete
from django.dispatch import receiver

from openai_django.models import Artifact
from openai_django.signals import call_failed, call_finished


@receiver(post_delete, sender=Artifact, dispatch_uid="openai_django.delete_artifact_file")
def delete_artifact_file(sender, instance, **kwargs):
    """Deleting an artifact (or the call that owns it) deletes its stored file too."""
    if instance.file:
        instance.file.delete(save=False)


@receiver([call_finished, call_failed], dispatch_uid="openai_django.send_callback")
def send_callback(sender, call, **kwargs):
    """When a call ends, however it ended and whichever process ended it: a call submitted
    with ``callback=`` sends that task its id, and a metadata-only background call drops the
    input files it had to keep until it was performed."""
    if call.callback or (call.metadata_only and call.mode == call.Mode.ASYNC):
        from openai_django.tasks import call_ended

        call_ended(call)
