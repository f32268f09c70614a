"""The image-URL fetcher against real local HTTPS servers, with certificates made here.

The name of the image host resolves through a resolver the test scripts (the fetcher's
module-level ``resolve``), so that one name can answer one address and then another, as a
DNS-rebinding attacker would; the connections, the TLS handshakes and the HTTP exchanges are
real. Every server listens on a loopback address (127.0.0.x), so the tests that connect allow
private addresses, and the tests of the refusal do not.
"""

import datetime
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openai_django import artifacts
from openai_django.artifacts import FetchRefused, fetch_image, is_inline_safe

pytestmark = pytest.mark.once  # no database or storage of the run's own

NAME = "images.example.test"
OTHER = "other.example.test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
LIMIT = 4096


# -- certificates ------------------------------------------------------------------------------


def _subject(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path, data):
    path.write_bytes(data)
    return str(path)


class CertificateAuthority:
    """A CA of the test's own; ``path`` is its certificate, the fetcher's ``IMAGE_URL_VERIFY``."""

    def __init__(self, directory):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_subject("openai-django test CA"))
            .issuer_name(_subject("openai-django test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = _write(directory / "ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name):
        """(certificate file, key file) for the DNS name ``name``, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_subject(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (_write(self.directory / f"{name}.pem",
                       cert.public_bytes(serialization.Encoding.PEM)),
                _write(self.directory / f"{name}.key", key_pem))


# -- the image servers ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Host")))
        body = PNG + owner.label
        if self.path == "/image.png":
            self._answer(200, "image/png", body)
        elif self.path == "/page.html":
            self._answer(200, "text/html; charset=utf-8", b"<script>alert(1)</script>")
        elif self.path == "/redirect":
            self._answer(302, "text/plain", b"", location=f"https://{NAME}/image.png")
        elif self.path == "/big":
            self._answer(200, "image/png", PNG * 20)
        elif self.path == "/big-undeclared":
            self._answer(200, "image/png", PNG * 20, declare_length=False)
        elif self.path == "/slow":
            self._drip()
        else:
            self._answer(404, "text/plain", b"not here")

    def _answer(self, status, content_type, body, *, location=None, declare_length=True):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if location:
            self.send_header("Location", location)
        if declare_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self):
        """A small image, one byte every 0.1 s: each read is quick, the whole is not."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for byte in PNG[:100]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the fetcher gave up


class ImageServer:
    """An HTTPS server on ``address`` with the certificate of one name; it records the path and
    ``Host`` of each request and the SNI name of each handshake. ``label`` ends every image, so
    a test can tell which server answered."""

    def __init__(self, address, cert, *, label, port=0):
        self.address, self.label = address, label
        self.requests, self.sni = [], []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)
        context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.httpd = ThreadingHTTPServer((address, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def clear(self):
        self.requests.clear()
        self.sni.clear()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(ca):
    """Servers ``a`` (127.0.0.1) and ``b`` (127.0.0.2, the same port) with the certificate of
    NAME, and ``other`` (127.0.0.3) with the certificate of OTHER."""
    cert = ca.issue(NAME)
    for _ in range(20):
        a = ImageServer("127.0.0.1", cert, label=b"server A")
        try:
            b = ImageServer("127.0.0.2", cert, label=b"server B", port=a.port)
        except OSError:  # that port is taken on 127.0.0.2: another pair
            a.stop()
            continue
        break
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    other = ImageServer("127.0.0.3", ca.issue(OTHER), label=b"server other")
    yield {"a": a, "b": b, "other": other}
    for server in (a, b, other):
        server.stop()


class ScriptedResolver:
    """Answers each lookup of a name with the next of its scripted answers (the last repeats),
    and remembers the lookups."""

    def __init__(self):
        self.answers, self.lookups = {}, []

    def script(self, name, *answers):
        self.answers[name] = [list(answer) for answer in answers]

    def __call__(self, host, port):
        self.lookups.append((host, port))
        answers = self.answers[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def resolver(monkeypatch, servers, ca, settings):
    """The fetcher's resolver, scripted; the fetch settings for these servers."""
    for server in servers.values():
        server.clear()
    settings.OPENAI_DJANGO = {
        **(getattr(settings, "OPENAI_DJANGO", None) or {}),
        "IMAGE_URL_HOSTS": ["*.example.test"], "IMAGE_URL_SCHEMES": ["https"],
        "IMAGE_URL_ALLOW_PRIVATE": True, "IMAGE_URL_VERIFY": ca.path,
        "IMAGE_URL_TIMEOUT": 5.0, "IMAGE_URL_MAX_BYTES": LIMIT,
    }
    scripted = ScriptedResolver()
    monkeypatch.setattr(artifacts, "resolve", scripted)
    return scripted


def url(server, path="/image.png", name=NAME):
    return f"https://{name}:{server.port}{path}"


# -- connecting to the checked address ---------------------------------------------------------


def test_the_connection_goes_to_the_address_that_was_checked(servers, resolver):
    a, b = servers["a"], servers["b"]
    # The name answers A, and B to any later lookup: the rebinding.
    resolver.script(NAME, ["127.0.0.1"], ["127.0.0.2"])
    data, content_type = fetch_image(url(a))
    assert data == PNG + b"server A" and content_type == "image/png"
    assert resolver.lookups == [(NAME, a.port)]  # looked up once, by the fetcher
    assert a.requests == [("/image.png", f"{NAME}:{a.port}")] and a.sni == [NAME]
    assert b.requests == [] and b.sni == []
    # B is there and serves the name too: the next fetch, whose lookup answers B, gets B.
    data, _ = fetch_image(url(a))
    assert data.endswith(b"server B") and b.sni == [NAME] and len(a.requests) == 1


def test_each_resolved_address_is_tried_in_order(servers, resolver):
    a = servers["a"]
    resolver.script(NAME, ["127.0.0.9", "127.0.0.2", "127.0.0.1"])  # nothing on 127.0.0.9
    data, _ = fetch_image(url(a))
    assert data.endswith(b"server B") and a.requests == []
    resolver.script(NAME, ["127.0.0.9", "127.0.0.8"])
    with pytest.raises(FetchRefused, match=r"cannot connect to .* 127\.0\.0\.9, 127\.0\.0\.8"):
        fetch_image(url(a))


def test_a_certificate_for_another_name_fails(servers, resolver, settings):
    other = servers["other"]
    resolver.script(NAME, ["127.0.0.3"])
    with pytest.raises(FetchRefused, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_image(url(other))
    assert other.sni == [NAME] and other.requests == []  # the handshake failed, nothing sent
    # The same server under its own name is fine: it is the name that failed.
    resolver.script(OTHER, ["127.0.0.3"])
    data, _ = fetch_image(url(other, name=OTHER))
    assert data.endswith(b"server other")
    # And a certificate from a CA the fetcher does not trust fails as well.
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "IMAGE_URL_VERIFY": True}
    with pytest.raises(FetchRefused, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_image(url(other, name=OTHER))


# -- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize("addresses", [
    ["127.0.0.1"], ["10.1.2.3"], ["192.168.0.10"], ["169.254.169.254"], ["100.64.0.1"],
    ["::1"], ["fe80::1"], ["fd00::1"], ["::ffff:127.0.0.1"], ["0.0.0.0"],
    ["8.8.8.8", "127.0.0.1"],  # one private answer among public ones is enough
])
def test_private_addresses_are_refused_before_any_connection(servers, resolver, settings,
                                                             addresses):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "IMAGE_URL_ALLOW_PRIVATE": False}
    resolver.script(NAME, addresses)
    with pytest.raises(FetchRefused, match="non-public address"):
        fetch_image(url(servers["a"]))
    assert all(not s.sni and not s.requests for s in servers.values())


def test_redirects_are_refused(servers, resolver):
    a = servers["a"]
    resolver.script(NAME, ["127.0.0.1"])
    with pytest.raises(FetchRefused, match=r"redirects \(HTTP 302\)"):
        fetch_image(url(a, "/redirect"))
    assert [path for path, _ in a.requests] == ["/redirect"]  # the Location was not followed


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
def test_oversize_images_are_refused(servers, resolver, path):
    resolver.script(NAME, ["127.0.0.1"])
    with pytest.raises(FetchRefused, match=f"larger than {LIMIT} bytes"):
        fetch_image(url(servers["a"], path))


def test_a_download_slower_than_the_timeout_is_refused(servers, resolver, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "IMAGE_URL_TIMEOUT": 0.5}
    resolver.script(NAME, ["127.0.0.1"])
    started = time.monotonic()
    with pytest.raises(FetchRefused, match="took too long"):
        fetch_image(url(servers["a"], "/slow"))  # 10 s in all, each byte within 0.1 s
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("target, reason", [
    (f"http://{NAME}/image.png", "scheme 'http' is not allowed"),
    ("https://images.elsewhere.test/image.png", "not in IMAGE_URL_HOSTS"),
])
def test_schemes_and_hosts_outside_the_lists_are_refused_unresolved(resolver, target, reason):
    with pytest.raises(FetchRefused, match=reason):
        fetch_image(target)
    assert resolver.lookups == []


# -- content types -----------------------------------------------------------------------------


def test_an_active_content_type_is_not_kept(servers, resolver):
    resolver.script(NAME, ["127.0.0.1"])
    data, content_type = fetch_image(url(servers["a"], "/page.html"))
    assert data == b"<script>alert(1)</script>"
    assert content_type == "application/octet-stream"


@pytest.mark.parametrize("content_type, inline", [
    ("image/png", True), ("IMAGE/JPEG; q=1", True), ("image/webp", True), ("audio/mpeg", True),
    ("image/svg+xml", False), ("text/html", False), ("application/xhtml+xml", False),
    ("text/plain", False), ("application/pdf", False), ("", False), (None, False),
])
def test_only_passive_types_are_inline_safe(content_type, inline):
    assert is_inline_safe(content_type) is inline


def test_the_real_resolver_answers_addresses_once_each():
    assert artifacts.resolve("127.0.0.1", 443) == ["127.0.0.1"]
    assert set(artifacts.resolve("localhost", 443)) <= {"127.0.0.1", "::1"}
