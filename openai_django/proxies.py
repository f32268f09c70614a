"""Which forward proxy a connection goes through, and the TLS settings it is made with.

One rule for the upstream clients (sync and async) and the image fetcher: a ``proxy`` setting
of ``None`` follows the environment as ``requests``, ``curl`` and the ``openai`` SDK do
(``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``, read by the standard library's
:func:`urllib.request.getproxies` and :func:`urllib.request.proxy_bypass`, not parsed here),
``False`` (or ``""``) connects directly, and a URL names the proxy. HTTPS goes through a
``CONNECT`` tunnel (TLS end to end: the proxy sees only the host name and port); plain HTTP is
sent to the proxy in absolute form. The proxy itself is spoken to in plain HTTP
(``http://[user:password@]host:port``); its credentials go in ``Proxy-Authorization``.
"""

import base64
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: where it listens and the headers it is to be sent."""

    host: str
    port: int
    headers: tuple = ()  # (("Proxy-Authorization", "Basic ..."),) when it takes credentials
    url: str = ""  # as configured, credentials masked (for logs and the admin)

    @property
    def header_dict(self):
        return dict(self.headers)


def parse_proxy(url):
    """A :class:`Proxy` from ``http://[user:password@]host[:port]`` (a bare ``host:port`` is
    taken as ``http://``)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ImproperlyConfigured(
            f"Proxy {mask(url)!r}: only http:// proxies are supported (HTTPS to the upstream "
            f"still goes through them end to end, in a CONNECT tunnel).")
    if not parts.hostname:
        raise ImproperlyConfigured(f"Proxy {mask(url)!r} names no host.")
    headers = ()
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers = (("Proxy-Authorization", "Basic " + base64.b64encode(token).decode()),)
    return Proxy(parts.hostname, parts.port or 8080, headers, mask(url))


def mask(url):
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def proxy_url_for(url, setting=None):
    """The proxy URL a request to ``url`` goes through (``None``: direct), per ``setting``."""
    if setting is False or setting == "":
        return None
    if setting:
        return setting
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies:
        return None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    if urllib.request.proxy_bypass(netloc):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


def proxy_for(url, setting=None):
    """The :class:`Proxy` a request to ``url`` goes through, or ``None``."""
    proxy_url = proxy_url_for(url, setting)
    return parse_proxy(proxy_url) if proxy_url else None


def ssl_context(ca_bundle=None, client_cert=None):
    """A verifying TLS context trusting ``ca_bundle`` (a PEM file or directory; else the
    system's store) and presenting ``client_cert`` (a PEM file holding certificate and key,
    or a ``(certificate, key)`` pair); ``None`` when neither is set (the clients' default
    context)."""
    if not ca_bundle and not client_cert:
        return None
    if ca_bundle:
        import os

        if os.path.isdir(ca_bundle):
            context = ssl.create_default_context(capath=ca_bundle)
        else:
            context = ssl.create_default_context(cafile=ca_bundle)
    else:
        context = ssl.create_default_context()
    if client_cert:
        if isinstance(client_cert, (list, tuple)):
            context.load_cert_chain(client_cert[0], client_cert[1])
        else:
            context.load_cert_chain(client_cert)
    return context
