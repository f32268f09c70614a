"""HTTP/2 to the upstream (``HTTP2`` / an upstream's ``"http2"``): the async client against the
real stand-in speaking h2c (prior knowledge) and h2 over TLS (ALPN), and the gateway under a
real uvicorn through the lean ASGI entry with HTTP/2 on.

The connections are counted twice: by the client's pool and in the kernel's table of TCP
sockets (``/proc/net/tcp``: the client's connections to the stand-in's port).
"""

import asyncio
import json
import time

import orjson
import pytest

from openai_django.errors import UpstreamTimeout, UpstreamUnavailable
from openai_django.sse import SSEParser
from openai_django.testing import StandinServer
from openai_django.transport.aio import AsyncUpstreamClient
from tests.fixtures.asgi import AsgiSite, tcp_connections
from tests.test_transport_async import client_ports

pytestmark = [pytest.mark.once, pytest.mark.timeout(120)]

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
JSON = "application/json"


@pytest.fixture(scope="module")
def h2c():
    """A stand-in of this module's own: plain HTTP/1.1 and h2c on one port, and TLS (h2 in
    ALPN) on another; at most 8 streams a connection."""
    server = StandinServer(log_level="warning", tls=True, tls_h2=True, h2_max_streams=8)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def standin(h2c):
    h2c.clear_faults()
    h2c.clear_requests()
    h2c.configure(ttft_ms=0, gap_ms=0, events=8)
    yield h2c
    h2c.clear_faults()


def client_for(server, **options):
    options = {"read_timeout": 5.0, "connect_timeout": 5.0, "http2": True, **options}
    return AsyncUpstreamClient(server.url, "sk-upstream-h2", **options)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def stream(client, events=5, gap_ms=0, ttft_ms=0):
    headers = {"X-Standin-Events": str(events), "X-Standin-Gap-Ms": str(gap_ms),
               "X-Standin-Ttft-Ms": str(ttft_ms)}
    return await client.send("POST", "/chat/completions", body=STREAM, content_type=JSON,
                             headers=headers, stream=True)


async def read_all(response):
    parser = SSEParser()
    async for chunk in response.raw:
        parser.feed(chunk)
    parser.close()
    return parser


# -- calls -------------------------------------------------------------------------------------


def test_json_call_over_h2c(standin):
    async def main():
        before = client_ports(standin.port)
        client = client_for(standin)
        response = await client.send("POST", "/chat/completions", body=CHAT,
                                     content_type=JSON, headers={"User-Agent": "site/1"})
        ports = client_ports(standin.port) - before
        again = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        opened = client.h2pool.opened, client.pool.opened
        await client.aclose()
        return response, again, ports, opened

    response, again, ports, opened = run(main())
    assert response.status == 200 and again.status == 200
    assert orjson.loads(response.body)["object"] == "chat.completion"
    assert response.headers["content-type"].startswith("application/json")
    assert all(name == name.lower() and not name.startswith(":") for name in response.headers)
    assert 0 < response.first_byte_ms <= response.elapsed_ms
    assert opened == (1, 0)  # one HTTP/2 connection for both calls, no HTTP/1.1 one
    assert len(ports) == 1
    logged = standin.requests()[-2]
    assert logged["path"] == "/v1/chat/completions" and logged["body"]["model"] == "gpt-4o-mini"
    assert logged["headers"]["authorization"].startswith("Bearer ")  # masked by the log
    assert logged["headers"]["user-agent"].startswith("site/1 openai-django/")


def test_error_status_and_a_large_body_over_h2c(standin):
    """An error status is an answer like any other; a body larger than the server's window
    (1 MiB a stream here) goes whole, as the windows open."""
    big = orjson.dumps({"model": "text-embedding-3-small", "input": "x" * 3_000_000})

    async def main():
        client = client_for(standin)
        missing = await client.send("GET", "/files/file-nope")
        embedded = await client.send("POST", "/embeddings", body=big, content_type=JSON)
        await client.aclose()
        return missing, embedded

    missing, embedded = run(main())
    assert missing.status == 404 and "error" in orjson.loads(missing.body)
    assert embedded.status == 200, embedded.body[:300]
    assert orjson.loads(embedded.body)["object"] == "list"


def test_stream_over_h2c_is_paced(standin):
    async def main():
        client = client_for(standin)
        response = await stream(client, events=6, gap_ms=80)
        times = []
        async for _chunk in response.raw:
            times.append(time.monotonic())
        await client.aclose()
        return response, times

    response, times = run(main())
    assert response.status == 200 and response.headers["content-type"].startswith(
        "text/event-stream")
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 6
    # Every event its own chunk, at the stand-in's pace (not held back, not coalesced).
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.080, abs=0.03), gaps
    assert sum(1 for g in gaps[:5] if g > 0.04) >= 4, gaps


def test_many_streams_share_connections_within_max_concurrent_streams(standin):
    """30 streams at once, the server allowing 8 a connection: 4 connections (8+8+8+6),
    each never above 8 open streams; every stream whole."""
    async def main():
        before = client_ports(standin.port)
        client = client_for(standin)
        most = {}

        async def one():
            response = await stream(client, events=6, gap_ms=50)
            for conn in client.h2pool.connections:
                most[id(conn)] = max(most.get(id(conn), 0), len(conn.streams))
            return await read_all(response)

        parsers = await asyncio.gather(*(one() for _ in range(30)))
        ports = client_ports(standin.port) - before
        opened = client.h2pool.opened
        await client.aclose()
        return parsers, most, ports, opened

    parsers, most, ports, opened = run(main())
    assert all(p.done and len(p.events) >= 6 for p in parsers)
    assert opened == 4 and len(ports) == 4
    assert max(most.values()) <= 8


def test_a_stream_closed_early_resets_only_itself(standin):
    async def main():
        client = client_for(standin)
        first = await stream(client, events=10, gap_ms=50)
        second = await stream(client, events=10, gap_ms=50)
        conn = client.h2pool.connections[0]
        assert len(conn.streams) == 2
        await first.raw.__anext__()
        await first.raw.aclose()  # the client went away: RST_STREAM for this stream only
        assert first.raw.closed and len(conn.streams) == 1 and not conn.closed
        parser = await read_all(second)
        third = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        opened = client.h2pool.opened
        await client.aclose()
        return parser, third, opened, conn

    parser, third, opened, conn = run(main())
    assert parser.done and len(parser.events) >= 10
    assert third.status == 200
    assert opened == 1  # the connection stayed, and served the next call


def test_upstream_cut_mid_stream_is_unavailable_for_that_stream_only(standin):
    """The stand-in cuts one answer (over HTTP/2: RST_STREAM): that stream fails as a cut
    HTTP/1.1 stream does (``broke off its stream``, 502); the other on the connection ends
    well."""
    standin.fault(path="/v1/chat/completions", kind="cut", after=2, times=1)

    async def main():
        client = client_for(standin)
        cut = await stream(client, events=6, gap_ms=30)
        other = await stream(client, events=6, gap_ms=30)
        chunks = []
        with pytest.raises(UpstreamUnavailable, match="broke off its stream") as info:
            async for chunk in cut.raw:
                chunks.append(chunk)
        parser = await read_all(other)
        opened = client.h2pool.opened
        await client.aclose()
        return chunks, info.value, parser, opened

    chunks, error, parser, opened = run(main())
    assert b"".join(chunks).count(b"data: ") == 2
    assert error.status_code == 502
    assert parser.done and opened == 1


def test_a_lost_connection_fails_its_streams_and_the_next_call_opens_another(standin):
    """The ``reset`` fault drops the whole TCP connection: both streams on it fail as
    unavailable; the next call opens a new connection."""
    async def main():
        client = client_for(standin)
        live = await stream(client, events=20, gap_ms=50)
        await live.raw.__anext__()
        standin.fault(path="/v1/chat/completions", kind="reset", times=1)
        with pytest.raises(UpstreamUnavailable) as first:
            await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        with pytest.raises(UpstreamUnavailable, match="broke off its stream"):
            async for _ in live.raw:
                pass
        after = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        opened = client.h2pool.opened
        await client.aclose()
        return first.value, after, opened

    error, after, opened = run(main())
    assert error.status_code == 502
    assert after.status == 200 and opened == 2


def test_read_timeouts_are_upstream_timeout(standin):
    async def main():
        client = client_for(standin, read_timeout=0.4)
        standin.fault(path="/v1/chat/completions", kind="delay", seconds=3, times=1)
        start = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="did not answer within the timeout") as head:
            await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        head_s = time.monotonic() - start
        standin.fault(path="/v1/chat/completions", kind="hang_stream", after=2, seconds=5,
                      times=1)
        response = await stream(client, events=6)
        chunks = []
        start = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="stopped sending its stream") as body:
            async for chunk in response.raw:
                chunks.append(chunk)
        body_s = time.monotonic() - start
        ok = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        opened = client.h2pool.opened
        await client.aclose()
        return head.value, head_s, body.value, body_s, chunks, ok, opened

    head, head_s, body, body_s, chunks, ok, opened = run(main())
    assert head.status_code == 504 and body.status_code == 504
    assert head_s < 2.5 and body_s < 2.5  # the timeout, not the stand-in's stall
    assert b"".join(chunks).count(b"data: ") == 2
    assert ok.status == 200 and opened == 1  # timeouts reset streams, not the connection
    assert len([r for r in standin.requests() if r["path"] == "/v1/chat/completions"]) == 3


def test_goaway_lets_streams_finish_and_new_ones_go_to_a_new_connection(standin):
    async def main():
        client = client_for(standin)
        streams = [await stream(client, events=6, gap_ms=60) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert standin.goaway() >= 1
        await asyncio.sleep(0.1)
        old = client.h2pool.connections[0] if client.h2pool.connections else None
        later = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        parsers = [await read_all(s) for s in streams]
        opened = client.h2pool.opened
        await asyncio.sleep(0.2)
        await client.aclose()
        return parsers, later, opened, old

    parsers, later, opened, old = run(main())
    assert all(p.done and len(p.events) >= 6 for p in parsers)  # in flight: finished whole
    assert later.status == 200
    assert opened == 2  # the new call went to a new connection
    assert old is None or old.goaway


def test_h2_over_tls_by_alpn_and_http11_when_the_server_does_not_pick_it(standin, tmp_path):
    import ssl

    async def main(url, ca):
        context = ssl.create_default_context(cafile=ca)
        client = AsyncUpstreamClient(url, "sk-upstream-h2", http2=True, ssl_context=context,
                                     read_timeout=5.0)
        response = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        parser = await read_all(await stream(client, events=4))
        counts = client.h2pool.opened, client.pool.opened, client.h2pool.http11_only
        await client.aclose()
        return response, parser, counts

    response, parser, counts = run(main(standin.tls_url, standin.ca_file))
    assert response.status == 200 and parser.done
    assert counts == (1, 0, False)  # h2, chosen in ALPN
    with StandinServer(log_level="warning", tls=True) as plain_tls:  # ALPN: http/1.1 only
        response, parser, counts = run(main(plain_tls.tls_url, plain_tls.ca_file))
    assert response.status == 200 and parser.done
    assert counts[1] >= 1 and counts[2] is True  # HTTP/1.1 from then on


def test_http11_clients_of_the_standin_are_unchanged(standin):
    """The stand-in's HTTP/1.1 path beside h2c on the same port."""
    async def main():
        client = client_for(standin, http2=False)
        response = await client.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        parser = await read_all(await stream(client, events=4))
        opened = client.pool.opened, client.h2pool
        await client.aclose()
        return response, parser, opened

    response, parser, (opened, h2pool) = run(main())
    assert response.status == 200 and parser.done and opened == 1 and h2pool is None


def test_connection_failures_are_unavailable_and_unsent():
    """No connection (refused), or a server that does not speak h2c (an HTTP/1.1-only one
    answers the preface with an error): 502, marked unsent (a fallback upstream may be
    asked, as over HTTP/1.1)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def http11_only(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close"
                     b"\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main():
        refused = AsyncUpstreamClient(f"http://127.0.0.1:{port}/v1", "sk", http2=True,
                                      connect_timeout=2)
        with pytest.raises(UpstreamUnavailable, match="could not be reached") as first:
            await refused.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        server = await asyncio.start_server(http11_only, "127.0.0.1", 0)
        other = server.sockets[0].getsockname()[1]
        h1 = AsyncUpstreamClient(f"http://127.0.0.1:{other}/v1", "sk", http2=True,
                                 connect_timeout=2)
        with pytest.raises(UpstreamUnavailable, match="no HTTP/2 from the upstream") as second:
            await h1.send("POST", "/chat/completions", body=CHAT, content_type=JSON)
        server.close()
        return first.value, second.value

    first, second = run(main())
    assert first.status_code == second.status_code == 502
    assert first.unsent and second.unsent


# -- the gateway under uvicorn, HTTP/2 on ---------------------------------------------------


def test_gateway_under_uvicorn_relays_and_records_over_http2(standin):
    """The lean ASGI entry with ``HTTP2``: 12 streams at once reach the client paced, are
    recorded whole, and share one upstream connection of the worker; an upstream that cuts
    its stream is recorded ``stream_broken``, as over HTTP/1.1."""
    import httpx

    site = AsgiSite(standin.url, overrides={"HTTP2": True})
    standin.configure(events=6, gap_ms=100)
    try:
        server = site.start_server("uvicorn")
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}

        async def one(client):
            headers = site.headers
            times, pending, blocks = [], b"", []
            async with client.stream("POST", server.url + "/v1/chat/completions",
                                     json=body, headers=headers) as response:
                async for chunk in response.aiter_raw():
                    now = time.monotonic()
                    pending += chunk
                    while b"\n\n" in pending:
                        block, pending = pending.split(b"\n\n", 1)
                        blocks.append(block)
                        times.append(now)
                return response.status_code, response.headers["x-call-id"], times, blocks

        async def many():
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
                return await asyncio.gather(*(one(client) for _ in range(12)))

        results = asyncio.run(many())
        upstream_conns = tcp_connections(server.worker_pids(), remote_port=standin.port)
        for status, call_id, times, blocks in results:
            assert status == 200
            assert blocks[-1] == b"data: [DONE]"
            gaps = [b - a for a, b in zip(times, times[1:-1])]
            assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.100, abs=0.04), gaps
            row = site.wait_call(call_id, lambda r: r["status"] not in ("queued", "running"))
            assert row["status"] == "succeeded" and row["outcome"] == "ok", row["error"]
            assert [json.loads(e)["id"] for e in row["stream_events"]] == [
                json.loads(b[6:])["id"] for b in blocks[:-1]]
        # All 12 on one HTTP/2 connection of the worker (the stand-in allows 8 a connection:
        # at most 2), none per stream.
        assert 1 <= len(upstream_conns) <= 2, upstream_conns

        standin.configure(gap_ms=20)
        standin.fault(path="/v1/chat/completions", kind="cut", after=2, times=1)
        status, call_id, times, blocks = asyncio.run(_one_plain(one))
        assert status == 200 and b"error" in blocks[-1]
        row = site.wait_call(call_id, lambda r: r["status"] not in ("queued", "running"))
        assert row["status"] == "failed" and row["outcome"] == "stream_broken", row
        assert len(row["stream_events"]) == 2
        assert row["error"]["type"] == "upstream_error"
    finally:
        site.close()


async def _one_plain(one):
    import httpx

    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return await one(client)
