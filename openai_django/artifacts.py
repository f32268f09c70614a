"""Saving binary parts of calls through Django's storage API."""

import hashlib
import ipaddress
import logging
import mimetypes
import socket
import time
from fnmatch import fnmatch
from urllib.parse import urlsplit

import urllib3
from django.core.files.base import ContentFile

from openai_django import __version__
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

    # A NUL in a client's file or field name is no part of a name (and PostgreSQL refuses it).
    name, field = name.replace("\x00", ""), field.replace("\x00", "")
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


# Raster image types a browser shows without running anything. A fetched image keeps its
# declared type only if it is one of these; anything else (an SVG, an HTML page) is stored as
# application/octet-stream, so that no later download can serve it as active content.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def is_inline_safe(content_type):
    """Whether an artifact of this (claimed) type may be served inline: raster images and audio.

    Everything else, above all ``text/html``, ``image/svg+xml`` and ``application/xhtml+xml``
    whose script would run in the site's origin, is to be served as an attachment with
    ``X-Content-Type-Options: nosniff``.
    """
    base = (content_type or "").split(";")[0].strip().lower()
    return base in INLINE_IMAGE_TYPES or base.startswith("audio/")


def _host_allowed(host):
    return any(fnmatch(host, pattern) for pattern in app_settings.IMAGE_URL_HOSTS)


def resolve(host, port):
    """The addresses ``host`` resolves to, in ``getaddrinfo``'s order, each once.

    The fetcher resolves a name only here, once, then checks these addresses and connects to
    them: a second lookup by the HTTP client could answer another address (DNS rebinding).
    Tests point this at a resolver of their own.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _is_public(address):
    address = ipaddress.ip_address(address.split("%")[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_reserved or address.is_multicast or address.is_unspecified)


def _addresses(host, port):
    """The addresses to connect to, checked: refuse hosts that resolve to private, loopback,
    link-local or reserved addresses, so a hostile upstream answer cannot make the gateway fetch
    from inside the site's network."""
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        raise FetchRefused(f"cannot resolve {host}: {exc}") from exc
    if not addresses:
        raise FetchRefused(f"cannot resolve {host}: no address")
    if not app_settings.IMAGE_URL_ALLOW_PRIVATE:
        for address in addresses:
            if not _is_public(address):
                raise FetchRefused(f"{host} resolves to a non-public address ({address})")
    return addresses


def _tls_options(options):
    verify = app_settings.IMAGE_URL_VERIFY
    if verify is False:
        options["cert_reqs"] = "CERT_NONE"
    else:
        options["cert_reqs"] = "CERT_REQUIRED"
        if isinstance(verify, str):
            options["ca_certs"] = verify
    return options


def _pool(scheme, address, host, port, timeout):
    """A one-connection pool to ``address``; over TLS the certificate is verified for ``host``,
    which is also the SNI name (``server_hostname``), exactly as if the name were dialled."""
    options = {"timeout": timeout, "retries": False, "maxsize": 1}
    if scheme != "https":
        return urllib3.HTTPConnectionPool(address, port, **options)
    return urllib3.HTTPSConnectionPool(address, port, server_hostname=host,
                                       **_tls_options(options))


class _Proxied:
    """:func:`_pool`'s stand-in through a forward proxy (urllib3's ``ProxyManager``): the
    request goes to the *checked address*, ``CONNECT address:port`` for HTTPS (TLS verified
    for ``host`` inside the tunnel, ``host`` as SNI), an absolute-form ``GET
    http://address:port/...`` for HTTP, ``Host`` naming ``host`` in both. So the proxy
    connects where the checks looked, and a name it would resolve otherwise (DNS
    rebinding, a split-horizon resolver) changes nothing."""

    def __init__(self, proxy, scheme, address, host, port, timeout):
        options = {"timeout": timeout, "retries": False, "maxsize": 1}
        if scheme == "https":
            options = _tls_options(options)
            options["server_hostname"] = host
        self.manager = urllib3.ProxyManager(f"http://{proxy.host}:{proxy.port}", num_pools=1,
                                            proxy_headers=proxy.header_dict, **options)
        self.origin = f"{scheme}://{f'[{address}]' if ':' in address else address}:{port}"

    def urlopen(self, method, target, **kwargs):
        return self.manager.urlopen(method, self.origin + target, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.manager.clear()


def _read(response, limit, deadline):
    if 300 <= response.status < 400:
        raise FetchRefused(f"the image URL redirects (HTTP {response.status}); "
                           f"redirects are not followed")
    if response.status != 200:
        raise FetchRefused(f"the image URL answered HTTP {response.status}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchRefused(f"the image is larger than {limit} bytes")
    data = bytearray()
    # read1, not stream(): stream() blocks until 64 KB have come, a byte at a time if need be.
    while chunk := response.read1(65536):
        data += chunk
        if len(data) > limit:
            raise FetchRefused(f"the image is larger than {limit} bytes")
        if time.monotonic() > deadline:
            raise FetchRefused("the image download took too long")
    content_type = response.headers.get("content-type", "image/png").split(";")[0]
    content_type = content_type.strip().lower()
    if content_type not in INLINE_IMAGE_TYPES:
        logger.warning("Fetched image declared as %r: stored as application/octet-stream",
                       content_type[:100])
        content_type = "application/octet-stream"
    return bytes(data), content_type


def fetch_image(url):
    """Fetch a generated image's URL under the allow-list; returns ``(bytes, content_type)``.

    Only the schemes and hosts in settings, never a private or loopback address (unless
    ``IMAGE_URL_ALLOW_PRIVATE``), no redirects, bounded in time (``IMAGE_URL_TIMEOUT`` for the
    whole download) and size. The name is resolved once and the connection goes to the address
    that was checked (each in turn while they refuse to connect); TLS is verified against the
    name, with the name as SNI and ``Host``. Behind a forward proxy (``IMAGE_URL_PROXY``, by
    default the environment's, ``NO_PROXY`` honoured) all of this still holds: the proxy is
    asked to connect to the address that was checked (:class:`_Proxied`).
    """
    parts = urlsplit(url)
    if parts.scheme not in app_settings.IMAGE_URL_SCHEMES:
        raise FetchRefused(f"scheme {parts.scheme!r} is not allowed")
    host = parts.hostname or ""
    if not _host_allowed(host):
        raise FetchRefused(f"host {host!r} is not in IMAGE_URL_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port)
    deadline = time.monotonic() + app_settings.IMAGE_URL_TIMEOUT
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": (f"[{host}]" if ":" in host else host)
               + (f":{parts.port}" if parts.port else ""),
               "User-Agent": f"openai-django/{__version__}"}
    failure = None
    from openai_django.proxies import proxy_for

    proxy = proxy_for(url, app_settings.IMAGE_URL_PROXY)
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        timeout = urllib3.Timeout(remaining)
        with (_pool(parts.scheme, address, host, port, timeout) if proxy is None else
              _Proxied(proxy, parts.scheme, address, host, port, timeout)) as pool:
            try:
                response = pool.urlopen("GET", target, headers=headers, redirect=False,
                                        retries=False, preload_content=False)
            except urllib3.exceptions.ConnectTimeoutError as exc:  # and NewConnectionError
                failure = exc
                continue  # this address does not answer: the next one, checked as well
            except urllib3.exceptions.HTTPError as exc:
                raise FetchRefused(f"fetching from {host} ({address}) failed: {exc}") from exc
            try:
                return _read(response, app_settings.IMAGE_URL_MAX_BYTES, deadline)
            except urllib3.exceptions.HTTPError as exc:
                raise FetchRefused(f"reading from {host} ({address}) failed: {exc}") from exc
            finally:
                response.release_conn()
    raise FetchRefused(f"cannot connect to {host} at {', '.join(addresses)}: {failure}")
