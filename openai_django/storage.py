"""Serving artifacts from whatever storage holds them.

Two ways, chosen by ``OPENAI_DJANGO["ARTIFACT_URLS"]``; either way the permission check (the
call belongs to the key's user, or the admin user may view calls) happens in the app first:

* ``"stream"`` (default): the bytes go through the app. Works with every storage, keeps the
  bucket entirely private and unreachable from clients (the S3 endpoint may live in a private
  network), at the cost of a web thread for the length of the download.
* ``"signed"``: a ``302`` to a short-lived pre-signed URL (``ARTIFACT_URL_EXPIRES`` seconds),
  so large files never tie up a web worker. Only for storages that really sign (django-storages'
  S3 backend with ``querystring_auth`` on, or a CloudFront signer); any other storage is
  streamed, never redirected to a public URL.
"""

import logging

from django.core.signals import setting_changed
from django.http import FileResponse, HttpResponseRedirect
from django.utils.functional import LazyObject, empty
from django.utils.http import content_disposition_header

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.storage")

ARTIFACT_URL_MODES = ("stream", "signed")


class ArtifactStorage(LazyObject):
    """The storage of ``settings.STORAGES[OPENAI_DJANGO["STORAGE"]]``, looked up when used.

    ``FileField`` evaluates a callable ``storage`` once, when the model class is built; this
    proxy (like Django's own ``default_storage``) defers the lookup to the first use and
    forgets it when ``STORAGES`` or ``OPENAI_DJANGO`` change, so ``override_settings`` and
    settings assembled after import both reach the artifacts.
    """

    def _setup(self):
        from django.core.files.storage import storages

        self._wrapped = storages[app_settings.STORAGE]


artifact_storage = ArtifactStorage()


def _reset_storage(*, setting, **kwargs):
    if setting in ("STORAGES", "OPENAI_DJANGO"):
        artifact_storage._wrapped = empty


setting_changed.connect(_reset_storage, dispatch_uid="openai_django.storage.reset")


def _filename(artifact):
    return artifact.name or f"{artifact.role}-{artifact.index}"


def can_sign(storage):
    """Whether ``storage.url()`` gives a URL that expires (and so may be handed out)."""
    if not hasattr(storage, "bucket_name") or not hasattr(storage, "querystring_auth"):
        return False  # not django-storages' S3 backend: its url() cannot be trusted to expire
    if getattr(storage, "custom_domain", None):
        return bool(storage.querystring_auth and getattr(storage, "cloudfront_signer", None))
    return bool(storage.querystring_auth)


def signed_url(artifact, *, as_attachment=True, expires=None):
    """A pre-signed URL for the artifact's file, or ``None`` where the storage cannot sign."""
    storage = artifact.file.storage
    if not can_sign(storage):
        return None
    expires = expires or app_settings.ARTIFACT_URL_EXPIRES
    parameters = {
        "ResponseContentType": artifact.content_type or "application/octet-stream",
        "ResponseContentDisposition": content_disposition_header(as_attachment,
                                                                 _filename(artifact)),
        "ResponseCacheControl": "private, no-store",
    }
    return storage.url(artifact.file.name, parameters=parameters, expire=expires)


def open_artifact(artifact):
    """A readable binary file object for the artifact's content, read as it is sent.

    django-storages' ``S3File`` downloads the whole object into memory before the first byte
    can be read (a 512 MB file upload would need 512 MB of RAM per download); for S3 the
    object's body stream is returned instead.
    """
    storage = artifact.file.storage
    normalize = getattr(storage, "_normalize_name", None)
    bucket = getattr(storage, "bucket", None) if hasattr(storage, "bucket_name") else None
    if bucket is not None and normalize is not None:
        from storages.utils import clean_name

        return bucket.Object(normalize(clean_name(artifact.file.name))).get()["Body"]
    return artifact.file.open("rb")


DOWNLOAD_CSP = "default-src 'none'; sandbox"


def artifact_response(artifact, *, as_attachment=True):
    """The response that delivers an artifact (after the caller checked the permission).

    Its content type is whatever the uploader or the upstream claimed, so only raster images
    and audio are ever served inline, and every download carries ``nosniff`` and a CSP that
    forbids running anything (an HTML or SVG "image" opened from here runs no script)."""
    from openai_django.artifacts import is_inline_safe

    as_attachment = as_attachment or not is_inline_safe(artifact.content_type)
    if app_settings.ARTIFACT_URLS == "signed":
        url = signed_url(artifact, as_attachment=as_attachment)
        if url:
            response = HttpResponseRedirect(url)
            response["Cache-Control"] = "private, no-store"
            return response
    response = FileResponse(
        open_artifact(artifact),
        as_attachment=as_attachment,
        filename=_filename(artifact),
        content_type=artifact.content_type or "application/octet-stream",
    )
    if not response.has_header("Content-Length") and artifact.bytes:
        response["Content-Length"] = str(artifact.bytes)
    # Artifacts are private: no shared cache may keep them.
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = DOWNLOAD_CSP
    return response
