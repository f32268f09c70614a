"""Upstreams and image URLs reached through a real forward proxy on loopback, over TLS with a
CA made here: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment, a proxy per upstream
(with credentials), a CA bundle and a client certificate, the sync and the async client.

The proxy is :class:`openai_django.testing.proxy.ForwardProxy` (CONNECT tunnels and
absolute-form HTTP, in threads); the TLS upstream requiring a client certificate is a small
``http.server`` of this module; the OpenAI-compatible upstream is the stand-in.
"""

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openai_django import api, artifacts
from openai_django.artifacts import FetchRefused, fetch_image
from openai_django.errors import UpstreamUnavailable
from openai_django.models import Call
from openai_django.testing.proxy import ForwardProxy

# Proxies and TLS are the upstream side: the same on either database (run once).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.once]

HELLO = [{"role": "user", "content": "hello"}]
IMAGE_HOST = "images.example.test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


# -- a CA, and certificates for a server (by IP and name) and a client -----------------------


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class PKI:
    def __init__(self, directory):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name("proxy test CA"))
                     .issuer_name(_name("proxy test CA")).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                  False, False), True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                         self.key.public_key()), False)
                     .sign(self.key, hashes.SHA256()))
        self.path = str(directory / "ca.pem")
        (directory / "ca.pem").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label, *, names=(), ips=(), client=False):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(label))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), False))
        alt = [x509.DNSName(n) for n in names] + [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{label}.pem"
        key_path = self.directory / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(cert_path), str(key_path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.owner.seen.append(("GET", self.path, self._peer()))
        self._send(200, "image/png", PNG)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.owner.seen.append(("POST", self.path, self._peer()))
        answer = {"id": "chatcmpl-mtls", "object": "chat.completion", "created": 1,
                  "model": body.get("model"),
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "over mTLS"}}],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
        self._send(200, "application/json", json.dumps(answer).encode())

    def _peer(self):
        cert = self.connection.getpeercert()
        if not cert:
            return None
        return dict(part[0] for part in cert["subject"])["commonName"]


class TLSServer:
    """HTTPS on 127.0.0.1 with a certificate of the test CA; ``require_client_cert`` asks
    every client for a certificate of the same CA. ``seen``: (method, path, client CN)."""

    def __init__(self, ca, cert, *, require_client_cert=False):
        self.seen = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ca.path)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("proxy-pki"))


@pytest.fixture(scope="module")
def mtls(ca):
    server = TLSServer(ca, ca.issue("upstream", ips=["127.0.0.1"]), require_client_cert=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image_server(ca):
    server = TLSServer(ca, ca.issue(IMAGE_HOST, names=[IMAGE_HOST]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy():
    with ForwardProxy() as server:
        yield server


@pytest.fixture(scope="module")
def auth_proxy():
    with ForwardProxy(auth=("corp", "s3cret pass")) as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch, proxy, auth_proxy):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    proxy.clear()
    auth_proxy.clear()
    return monkeypatch


def use(settings, **options):
    """New OPENAI_DJANGO settings (the clients are rebuilt, the environment reread)."""
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, **options}


def ask(user, model="gpt-4o-mini"):
    return api.create("createChatCompletion", model=model, messages=HELLO, user=user)


def aask(user, model="gpt-4o-mini"):
    return asyncio.run(api.acreate("createChatCompletion", model=model, messages=HELLO,
                                   user=user))


# -- the environment's proxy ----------------------------------------------------------------


def test_https_upstream_through_the_environments_proxy(upstream, settings, clean_env, proxy,
                                                       user):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    use(settings, BASE_URL=upstream.tls_url, CA_BUNDLE=upstream.ca_file)
    assert ask(user).data["choices"]
    assert ("CONNECT", f"127.0.0.1:{upstream.tls_port}") in proxy.log
    proxy.clear()
    assert aask(user).data["choices"]  # the async client too
    assert proxy.log == [("CONNECT", f"127.0.0.1:{upstream.tls_port}")]


def test_no_proxy_is_honoured(upstream, settings, clean_env, proxy, user):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    use(settings, BASE_URL=upstream.tls_url, CA_BUNDLE=upstream.ca_file)
    assert ask(user).data["choices"]
    assert aask(user).data["choices"]
    assert proxy.log == []


def test_plain_http_upstream_through_the_environments_proxy(upstream, settings, clean_env,
                                                            proxy, user):
    clean_env.setenv("HTTP_PROXY", proxy.url)
    use(settings, BASE_URL=upstream.url)
    assert ask(user).data["choices"]
    assert aask(user).data["choices"]
    target = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
    assert proxy.log == [("POST", target), ("POST", target)]


def test_without_a_ca_bundle_the_test_ca_is_not_trusted(upstream, settings, clean_env, proxy,
                                                        user):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    use(settings, BASE_URL=upstream.tls_url)
    with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        ask(user)
    assert ("CONNECT", f"127.0.0.1:{upstream.tls_port}") in proxy.log
    call = Call.objects.order_by("-created").first()
    assert call.outcome == Call.Outcome.UNREACHABLE


# -- a proxy per upstream, with credentials, and a client certificate ----------------------


def _upstreams(upstream, mtls, ca, *, proxy_url, client_cert=True):
    return {
        "standin": {"base_url": upstream.tls_url, "api_key": "sk-upstream-secret-0000",
                    "ca_bundle": upstream.ca_file, "proxy": proxy_url, "models": ["gpt-*"]},
        "corp": {"base_url": f"https://127.0.0.1:{mtls.port}/v1", "api_key": "sk-corp-0000",
                 "ca_bundle": ca.path, "proxy": proxy_url, "models": ["corp-*"],
                 "client_cert": ca.issue("gateway-client", client=True)
                 if client_cert else None},
    }


def test_per_upstream_proxy_with_credentials_and_client_certificate(
        upstream, settings, clean_env, proxy, auth_proxy, mtls, ca, user):
    clean_env.setenv("HTTPS_PROXY", proxy.url)  # overridden by each upstream's own
    use(settings, UPSTREAMS=_upstreams(upstream, mtls, ca, proxy_url=auth_proxy.url_with_auth(
        "corp", "s3cret%20pass")))
    assert ask(user, "gpt-4o-mini").call.upstream == "standin"
    result = ask(user, "corp-large")
    assert result.data["choices"][0]["message"]["content"] == "over mTLS"
    assert result.call.upstream == "corp"
    assert mtls.seen[-1] == ("POST", "/v1/chat/completions", "gateway-client")
    assert aask(user, "corp-large").data["choices"]
    assert auth_proxy.log == [("CONNECT", f"127.0.0.1:{upstream.tls_port}"),
                              ("CONNECT", f"127.0.0.1:{mtls.port}"),
                              ("CONNECT", f"127.0.0.1:{mtls.port}")]
    assert proxy.log == [] and auth_proxy.refused == []


def test_wrong_proxy_credentials_and_missing_client_certificate_fail_cleanly(
        upstream, settings, clean_env, auth_proxy, mtls, ca, user):
    use(settings, UPSTREAMS=_upstreams(upstream, mtls, ca, proxy_url=auth_proxy.url))
    with pytest.raises(UpstreamUnavailable, match="407") as caught:
        ask(user)
    assert "s3cret" not in str(caught.value)
    assert auth_proxy.refused
    with pytest.raises(UpstreamUnavailable):
        aask(user)
    use(settings, UPSTREAMS=_upstreams(upstream, mtls, ca, client_cert=False,
                                       proxy_url=auth_proxy.url_with_auth("corp",
                                                                          "s3cret%20pass")))
    with pytest.raises(UpstreamUnavailable):
        ask(user, "corp-large")
    assert not [s for s in mtls.seen if s[2] is None]  # never answered without a cert


def test_proxy_false_connects_directly(upstream, settings, clean_env, proxy, user):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    use(settings, BASE_URL=upstream.tls_url, CA_BUNDLE=upstream.ca_file, PROXY=False)
    assert ask(user).data["choices"]
    assert proxy.log == []


# -- image URLs ------------------------------------------------------------------------------


@pytest.fixture
def image_settings(settings, ca, monkeypatch):
    monkeypatch.setattr(artifacts, "resolve", lambda host, port: ["127.0.0.1"])
    use(settings, IMAGE_URL_HOSTS=[IMAGE_HOST], IMAGE_URL_VERIFY=ca.path,
        IMAGE_URL_ALLOW_PRIVATE=True)
    return settings


def test_image_fetch_goes_through_the_proxy_to_the_checked_address(
        image_settings, image_server, clean_env, proxy):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    url = f"https://{IMAGE_HOST}:{image_server.port}/image.png"
    data, content_type = fetch_image(url)
    assert data == PNG and content_type == "image/png"
    # The address the checks looked at, not the name the proxy would resolve itself.
    assert proxy.log == [("CONNECT", f"127.0.0.1:{image_server.port}")]
    clean_env.setenv("NO_PROXY", IMAGE_HOST)
    proxy.clear()
    assert fetch_image(url)[0] == PNG
    assert proxy.log == []


def test_image_fetch_checks_still_refuse_private_addresses_behind_a_proxy(
        image_settings, image_server, clean_env, proxy):
    use(image_settings, IMAGE_URL_ALLOW_PRIVATE=False, IMAGE_URL_PROXY=proxy.url)
    with pytest.raises(FetchRefused, match="non-public"):
        fetch_image(f"https://{IMAGE_HOST}:{image_server.port}/image.png")
    assert proxy.log == []  # refused before the proxy was asked


def test_image_fetch_through_a_proxy_with_credentials(image_settings, image_server, clean_env,
                                                      auth_proxy):
    use(image_settings, IMAGE_URL_PROXY=auth_proxy.url_with_auth("corp", "s3cret%20pass"))
    assert fetch_image(f"https://{IMAGE_HOST}:{image_server.port}/image.png")[0] == PNG
    assert auth_proxy.log == [("CONNECT", f"127.0.0.1:{image_server.port}")]
    use(image_settings, IMAGE_URL_PROXY=auth_proxy.url)
    with pytest.raises(FetchRefused):
        fetch_image(f"https://{IMAGE_HOST}:{image_server.port}/image.png")
