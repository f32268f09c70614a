"""Serving artifacts from whatever storage holds them."""

from django.http import FileResponse


def artifact_response(artifact, *, as_attachment=True):
    """Stream an artifact's bytes through the app (works for any storage backend, local or
    S3, and keeps the permission check in the app rather than in a long-lived public URL)."""
    handle = artifact.file.open("rb")
    return FileResponse(
        handle,
        as_attachment=as_attachment,
        filename=artifact.name or f"{artifact.role}-{artifact.index}",
        content_type=artifact.content_type or "application/octet-stream",
    )
