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
    """A call submitted with ``callback=`` sends that task its id when it ends, however it
    ended and whichever process ended it."""
    if call.callback:
        from openai_django.tasks import send_callback

        send_callback(call)
