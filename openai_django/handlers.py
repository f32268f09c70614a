"""Receivers the app installs for itself."""

from django.db.models.signals import post_delete
from django.dispatch import receiver

from openai_django.models import Artifact


@receiver(post_delete, sender=Artifact, dispatch_uid="openai_django.delete_artifact_file")
def delete_artifact_file(sender, instance, **kwargs):
    """Deleting an artifact (or the call that owns it) deletes its stored file too."""
    if instance.file:
        instance.file.delete(save=False)
