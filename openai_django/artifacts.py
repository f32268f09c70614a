"""Saving binary parts of calls through Django's storage API."""

import hashlib
import ipaddress
import logging
import mimetypes
import socket
from fnmatch import fnmatch
from urllib.parse import urlsplit

import urllib3
from django.core.files.base import ContentFile

from openai_django.conf import app_settings

logger = logging.getLogger("openai_django.artifacts")

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp",
               "text/plain": ".txt", "application/json": ".json", "text/vtt": ".vtt",
               "application/x-subrip": ".srt", "application/jsonl": ".jsonl"}


def guess_type(name, default="application/octet-stream"):
    return mimetypes.guess_type(name or "")[0] or default


def save_artifact(call, role, data, *, name="", content_type="", field="", index=0,
                  source_url="", save=True):
    """Store ``data`` (bytes) as an artifact of ``call``; returns the Artifact."""
    from openai_django.models import Artifact

    content_type = content_type or guess_type(name)
    if not name:
        name = f"{role}-{index}{_EXTENSIONS.get(content_type, '')}"
    artifact = Artifact(
        call=call, role=role, field=field, index=index, name=name[:255],
        content_type=content_type[:100], bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), source_url=source_url,
    )
    artifact.file.save(name, ContentFile(data), save=False)
    if save:
        artifact.save()
    return artifact


def failed_artifact(call, role, error, *, name="", index=0, source_url=""):
    from openai_django.models import Artifact

    return Artifact.objects.create(call=call, role=role, index=index, name=name[:255],
                                   source_url=source_url[:2000], error=str(error)[:2000])


class FetchRefused(Exception):
    pass


def _host_allowed(host):
    return any(fnmatch(host, pattern) for pattern in app_settings.IMAGE_URL_HOSTS)


def _check_address(host, port):
    """Refuse hosts that resolve to private, loopback, link-local or reserved addresses, so a
    hostile upstream answer cannot make the gateway fetch from inside the site's network."""
    if app_settings.IMAGE_URL_ALLOW_PRIVATE:
        return
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise FetchRefused(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if (address.is_private or address.is_loopback or address.is_link_local
                or address.is_reserved or address.is_multicast or address.is_unspecified):
            raise FetchRefused(f"{host} resolves to a non-public address ({address})")


def fetch_image(url):
    """Fetch a generated image's URL under the allow-list; returns ``(bytes, content_type)``.

    Only the schemes and hosts in settings, never a private or loopback address (unless
    ``IMAGE_URL_ALLOW_PRIVATE``), no redirects, bounded in time and size.
    """
    parts = urlsplit(url)
    if parts.scheme not in app_settings.IMAGE_URL_SCHEMES:
        raise FetchRefused(f"scheme {parts.scheme!r} is not allowed")
    host = parts.hostname or ""
    if not _host_allowed(host):
        raise FetchRefused(f"host {host!r} is not in IMAGE_URL_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _check_address(host, port)
    verify = app_settings.IMAGE_URL_VERIFY
    kwargs = {}
    if parts.scheme == "https":
        if verify is False:
            kwargs["cert_reqs"] = "CERT_NONE"
        else:
            kwargs["cert_reqs"] = "CERT_REQUIRED"
            if isinstance(verify, str):
                kwargs["ca_certs"] = verify
    limit = app_settings.IMAGE_URL_MAX_BYTES
    with urllib3.PoolManager(**kwargs) as pool:
        response = pool.request(
            "GET", url, redirect=False, preload_content=False, retries=False,
            timeout=urllib3.Timeout(total=app_settings.IMAGE_URL_TIMEOUT),
        )
        try:
            if response.status != 200:
                raise FetchRefused(f"the image URL answered HTTP {response.status}")
            data = bytearray()
            for chunk in response.stream(65536):
                data += chunk
                if len(data) > limit:
                    raise FetchRefused(f"the image is larger than {limit} bytes")
            content_type = response.headers.get("content-type", "image/png").split(";")[0]
            return bytes(data), content_type
        finally:
            response.release_conn()
