"""The async upstream client (``openai_django.transport``) against the real stand-in upstream.

Each test runs its coroutine on a loop of its own (``asyncio.run``), so each gets a fresh
client from ``get_async_client()``. Connections are watched from outside the client too: the
kernel's table of TCP sockets (``/proc/net/tcp``) shows which connections to the stand-in's
port are open, on both ends.
"""

import asyncio
import resource
import ssl
import subprocess
import time

import orjson
import pytest

from openai_django import __version__
from openai_django.errors import UpstreamTimeout, UpstreamUnavailable
from openai_django.transport import AsyncUpstreamClient, close_async_client, get_async_client

pytestmark = pytest.mark.once  # no database or storage of the run's own

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
JSON = "application/json"


@pytest.fixture
def aio(upstream, settings):
    """The stand-in, with the gateway's settings pointing at it (plain HTTP)."""
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "READ_TIMEOUT": 5.0,
                              "CONNECT_TIMEOUT": 5.0, "ORGANIZATION": "org-site"}
    return upstream


def run(coro):
    async def main():
        try:
            return await asyncio.wait_for(coro, 60)
        finally:
            await close_async_client()

    return asyncio.run(main())


async def chat(client=None, **kwargs):
    client = client or get_async_client()
    return await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON,
                             **kwargs)


async def open_stream(events=5, ttft_ms=0, gap_ms=0, client=None):
    client = client or get_async_client()
    headers = {"X-Standin-Events": str(events), "X-Standin-Ttft-Ms": str(ttft_ms),
               "X-Standin-Gap-Ms": str(gap_ms)}
    return await client.send("POST", "/chat/completions", body=STREAM, content_type=JSON,
                             headers=headers, stream=True)


def established(port):
    """``{(local port, remote port)}`` of the ESTABLISHED or CLOSE_WAIT TCP sockets on this
    machine with ``port`` on either end (the kernel's view, not the client's)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = (int(fields[1].rsplit(":", 1)[1], 16),
                                    int(fields[2].rsplit(":", 1)[1], 16), fields[3])
            if state in ("01", "08") and port in (local, remote):
                found.add((local, remote))
    return found


def client_ports(port):
    """Local ports of our open connections to the stand-in listening on ``port``."""
    return {local for local, remote in established(port) if remote == port}


# -- calls -------------------------------------------------------------------------------------


def test_json_call(aio):
    response = run(chat())
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert all(name == name.lower() for name in response.headers)
    assert "x-request-id" in response.headers
    assert orjson.loads(response.body)["object"] == "chat.completion"
    assert 0 < response.first_byte_ms <= response.elapsed_ms
    assert response.raw is None
    logged = aio.requests()[-1]
    assert logged["path"] == "/v1/chat/completions" and logged["body"]["model"] == "gpt-4o-mini"
    assert logged["headers"]["user-agent"] == f"openai-django/{__version__}"
    assert logged["headers"]["authorization"].endswith("0000")
    assert logged["headers"]["openai-organization"] == "org-site"
    assert logged["headers"]["content-length"] == str(len(CHAT))


def test_client_organization_header_wins_and_query_is_sent(aio):
    async def main():
        return await get_async_client().send("GET", "/models", query="limit=2",
                                             headers={"OpenAI-Organization": "org-caller"})

    assert run(main()).status == 200
    logged = aio.requests()[-1]
    assert logged["headers"]["openai-organization"] == "org-caller"
    assert logged["query"] == {"limit": "2"}


def test_admin_sends_the_admin_key(aio, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "ADMIN_API_KEY": "sk-admin-key-9999"}
    response = run(chat(admin=True))
    # The stand-in takes only the ordinary key: its 401 names the key that came.
    assert response.status == 401
    assert b"9999" in response.body
    assert aio.requests()[-1]["headers"]["authorization"].endswith("9999")


def test_large_body_is_sent_whole(aio):
    big = orjson.dumps({"model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "x" * 300_000}]})

    async def main():
        return await get_async_client().send("POST", "/chat/completions", body=big,
                                             content_type=JSON)

    assert run(main()).status == 200
    assert aio.requests()[-1]["body_bytes"] == len(big)


def test_header_injection_is_refused(aio):
    async def main():
        await get_async_client().send("GET", "/models", headers={"X-A": "1\r\nX-B: 2"})

    with pytest.raises(ValueError):
        run(main())
    with pytest.raises(ValueError):
        run(get_async_client_send_target("/models HTTP/1.1\r\nX: y"))
    assert aio.requests() == []


async def get_async_client_send_target(path):
    await get_async_client().send("GET", path)


def test_http_error_status_is_a_response(aio):
    aio.fault(path="/v1/chat/completions", kind="status", status=429, retry_after=3)
    response = run(chat())
    assert response.status == 429 and response.headers["retry-after"] == "3"
    assert orjson.loads(response.body)["error"]


def test_settings_change_builds_a_new_client(aio, settings):
    async def twice():
        first = get_async_client()
        assert get_async_client() is first
        settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "READ_TIMEOUT": 7.0}
        second = get_async_client()
        return first, second

    first, second = run(twice())
    assert second is not first and second.pool.read_timeout == 7.0


# -- streams -----------------------------------------------------------------------------------


def test_stream_chunks_arrive_paced(aio):
    async def main():
        start = time.perf_counter()
        response = await open_stream(events=5, ttft_ms=150, gap_ms=100)
        assert response.status == 200 and response.headers["content-type"].startswith(
            "text/event-stream")
        arrivals = []
        async for chunk in response.raw:
            arrivals.extend([time.perf_counter() - start] * chunk.count(b"data: "))
        return arrivals

    arrivals = run(main())
    assert len(arrivals) == 6  # five events and [DONE]
    assert 0.14 <= arrivals[0] < 1.0
    gaps = [b - a for a, b in zip(arrivals[:4], arrivals[1:5])]
    assert all(0.09 <= gap < 0.6 for gap in gaps), gaps


def test_non_event_stream_answer_is_read_whole(aio):
    response = run(chat(stream=True))  # stream=True, but the answer is JSON: read whole
    assert response.raw is None and orjson.loads(response.body)["object"] == "chat.completion"


# -- keep-alive ----------------------------------------------------------------------------------


def test_keep_alive_reuse(aio):
    async def main():
        client = get_async_client()
        for _ in range(10):
            assert (await chat(client)).status == 200
        after_json = client_ports(aio.port)
        response = await open_stream(events=3, client=client)
        async for _ in response.raw:
            pass
        assert response.raw.closed  # read to its end: back in the pool
        for _ in range(5):
            assert (await chat(client)).status == 200
        return client.pool.opened, after_json, client_ports(aio.port)

    opened, after_json, after_stream = run(main())
    assert opened == 1
    assert len(after_json) == 1 and after_stream == after_json


def test_pool_keeps_at_most_pool_size_idle(aio, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "POOL_SIZE": 3}

    async def main():
        client = get_async_client()
        responses = await asyncio.gather(*(chat(client) for _ in range(10)))
        assert all(r.status == 200 for r in responses)
        return client.pool.opened, client.pool.idle

    opened, idle = run(main())
    assert opened == 10 and idle == 3  # never waits for a connection; keeps three


def test_idle_connection_closed_by_the_upstream_is_replaced():
    """An upstream that closes idle keep-alive connections (its idle timeout): the next call
    notices before writing and opens a new one; the request is sent exactly once."""
    seen = []

    async def main():
        async def answer(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            seen.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)  # then its idle timeout
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncUpstreamClient(f"http://127.0.0.1:{port}", "sk-x")
        try:
            first = await client.send("GET", "/models")
            assert client.pool.idle == 1
            await asyncio.sleep(0.2)
            second = await client.send("GET", "/models")
            return first.body, second.body, client.pool.opened
        finally:
            await client.aclose()
            server.close()
            await asyncio.sleep(0.1)  # the server's handlers close their ends

    assert run(main()) == (b"ok", b"ok", 2)
    assert len(seen) == 2


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
])
def test_an_answer_that_is_not_http_is_upstream_unavailable(answer):
    async def main():
        async def reply(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(reply, "127.0.0.1", 0)
        client = AsyncUpstreamClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                     "sk-x")
        try:
            with pytest.raises(UpstreamUnavailable):
                await client.send("GET", "/models")
            assert client.pool.idle == 0
        finally:
            server.close()
            await asyncio.sleep(0.05)

    run(main())


def test_connection_close_answer_is_not_kept(aio):
    async def main():
        client = get_async_client()
        response = await chat(client, headers={"Connection": "close"})
        assert response.status == 200 and client.pool.idle == 0
        assert (await chat(client)).status == 200
        return client.pool.opened

    assert run(main()) == 2


# -- failures ------------------------------------------------------------------------------------


def test_read_timeout_is_upstream_timeout(aio, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "READ_TIMEOUT": 0.3}
    aio.fault(path="/v1/chat/completions", kind="delay", seconds=3)
    start = time.perf_counter()
    with pytest.raises(UpstreamTimeout, match="did not answer within the timeout"):
        run(chat())
    assert time.perf_counter() - start < 2.5
    assert len(aio.requests()) == 1  # sent once, not retried


def test_stream_stall_is_upstream_timeout(aio, settings):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "READ_TIMEOUT": 0.3}
    aio.fault(path="/v1/chat/completions", kind="hang_stream", after=2, seconds=5)

    async def main():
        response = await open_stream(events=5)
        chunks = []
        with pytest.raises(UpstreamTimeout, match="stopped sending its stream"):
            async for chunk in response.raw:
                chunks.append(chunk)
        assert response.raw.closed
        return b"".join(chunks)

    assert run(main()).count(b"data: ") == 2


def test_connection_refused_is_upstream_unavailable(aio, settings):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "BASE_URL": f"http://127.0.0.1:{port}/v1"}
    with pytest.raises(UpstreamUnavailable, match="could not be reached") as info:
        run(chat())
    assert info.value.status_code == 502


def test_connect_timeout_is_upstream_timeout(aio, settings):
    # A listener whose backlog is full never completes the handshake of the next connection.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "CONNECT_TIMEOUT": 0.2,
                                  "BASE_URL": f"http://127.0.0.1:{listener.getsockname()[1]}"}
        start = time.perf_counter()
        with pytest.raises((UpstreamTimeout, UpstreamUnavailable)):
            run(chat())
        assert time.perf_counter() - start < 3
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_reset_is_upstream_unavailable_and_not_retried(aio):
    aio.fault(path="/v1/chat/completions", kind="reset")
    with pytest.raises(UpstreamUnavailable, match="could not be reached"):
        run(chat())
    assert len(aio.requests()) == 1  # the upstream had the request: never sent twice


def test_reset_on_a_reused_connection_is_not_retried(aio):
    async def main():
        client = get_async_client()
        await chat(client)
        aio.fault(path="/v1/chat/completions", kind="reset")
        with pytest.raises(UpstreamUnavailable):
            await chat(client)
        assert (await chat(client)).status == 200  # and the pool recovers
        return client.pool.opened

    assert run(main()) == 2
    assert len(aio.requests()) == 3


def test_cut_stream_is_upstream_unavailable(aio):
    aio.fault(path="/v1/chat/completions", kind="cut", after=2)

    async def main():
        client = get_async_client()
        response = await open_stream(events=5, client=client)
        chunks = []
        with pytest.raises(UpstreamUnavailable, match="broke off its stream"):
            async for chunk in response.raw:
                chunks.append(chunk)
        assert (await chat(client)).status == 200
        return b"".join(chunks), client.pool.opened

    body, opened = run(main())
    assert body.count(b"data: ") == 2 and opened == 2  # the broken connection not reused


def test_malformed_answer_is_a_response(aio):
    aio.fault(path="/v1/chat/completions", kind="malformed")
    response = run(chat())
    assert response.status == 200
    with pytest.raises(ValueError):
        orjson.loads(response.body)


# -- closing a stream ----------------------------------------------------------------------------


def test_aclose_mid_stream_closes_the_connection(aio):
    async def main():
        client = get_async_client()
        response = await open_stream(events=50, gap_ms=100, client=client)
        chunks = response.raw.__aiter__()
        await chunks.__anext__()
        (mine,) = client_ports(aio.port)
        await response.raw.aclose()
        deadline = time.monotonic() + 2
        # Both ends gone: ours at once, the stand-in's when it reads our close.
        while any(mine in pair for pair in established(aio.port)) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        gone = not any(mine in pair for pair in established(aio.port))
        assert response.raw.closed
        async for _ in response.raw:  # closed: yields nothing
            raise AssertionError("a closed stream yielded")
        assert (await chat(client)).status == 200
        return gone, client.pool.opened, time.monotonic() - (deadline - 2)

    gone, opened, took = run(main())
    assert gone and took < 1.0  # well before the stream's own 5 s end
    assert opened == 2


def test_aclose_from_another_task_ends_a_pending_read(aio):
    async def main():
        response = await open_stream(events=50, gap_ms=200)
        chunks = []

        async def relay():
            async for chunk in response.raw:
                chunks.append(chunk)

        task = asyncio.ensure_future(relay())
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await response.raw.aclose()
        with pytest.raises(UpstreamUnavailable):
            await task
        return time.perf_counter() - started, len(chunks)

    took, received = run(main())
    assert took < 0.15 and received == 1


def test_cancelled_send_drops_its_connection(aio):
    async def main():
        client = get_async_client()
        aio.fault(path="/v1/chat/completions", kind="delay", seconds=5)
        task = asyncio.ensure_future(chat(client))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pool.idle == 0
        await asyncio.sleep(0.1)
        return client_ports(aio.port)

    assert run(main()) == set()


def test_thousand_concurrent_streams_on_one_loop(aio):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))

    async def one(client):
        response = await open_stream(events=5, gap_ms=50, client=client)
        assert response.status == 200
        data = b""
        async for chunk in response.raw:
            data += chunk
        return data.count(b"data: ")

    async def main():
        client = get_async_client()
        results = await asyncio.gather(*(one(client) for _ in range(1000)),
                                       return_exceptions=True)
        return results, (client.pool.idle, client.pool.maxsize)

    start = time.perf_counter()
    results, idle = run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert results == [6] * 1000
    assert idle[0] == idle[1]  # POOL_SIZE idle kept, the rest closed
    assert time.perf_counter() - start < 30


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls(aio, settings, monkeypatch):
    """The gateway's settings on the stand-in's TLS listener; its certificate trusted the way
    the sync client's default context trusts one: ``SSL_CERT_FILE``."""
    monkeypatch.setenv("SSL_CERT_FILE", aio.ca_file)
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "BASE_URL": aio.tls_url}
    return aio


def test_tls_with_the_standin_certificate(tls):
    async def main():
        client = get_async_client()
        first = await chat(client)
        response = await open_stream(events=3, client=client)
        data = b"".join([chunk async for chunk in response.raw])
        second = await chat(client)
        conn = client.pool._idle[0]
        return first, second, data, client.pool.opened, conn.writer.get_extra_info("ssl_object")

    first, second, data, opened, ssl_object = run(main())
    assert first.status == second.status == 200 and data.count(b"data: ") == 4
    assert opened == 1 and ssl_object is not None and ssl_object.version().startswith("TLS")


def test_tls_untrusted_certificate_is_refused(aio, settings, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "BASE_URL": aio.tls_url}
    with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        run(chat())
    assert aio.requests() == []  # nothing was sent


def test_tls_host_name_is_checked(tmp_path):
    """A trusted certificate for another name is refused (hostname verification)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=other.example",
                    "-addext", "subjectAltName=DNS:other.example"],
                   check=True, capture_output=True, timeout=60)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    async def main():
        async def answer(reader, writer):
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        trusted = ssl.create_default_context(cafile=str(cert))
        client = AsyncUpstreamClient(f"https://127.0.0.1:{port}/v1", "sk-x",
                                     ssl_context=trusted, connect_timeout=5)
        try:
            with pytest.raises(UpstreamUnavailable, match="IP address mismatch|match"):
                await chat(client)
        finally:
            server.close()

    run(main())


def test_https_default_context_checks_names():
    client = AsyncUpstreamClient("https://127.0.0.1:1/v1", "sk-x")
    context = client.pool._context
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
