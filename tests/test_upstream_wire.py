"""The upstream client's own request writer and response head reader (upstream.py) against
``http.client``'s: the same bytes on the wire, the same checks, the same answers read."""

import http.client
import socket
import threading

import pytest

from openai_django import upstream


class _Peer:
    """A loopback server that records each request's bytes and answers ``replies`` in turn."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.received = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return  # closed without a connection (a request refused before it was sent)
        with conn:
            for reply in self.replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.received.append(head + b"\r\n\r\n" + rest)
                conn.sendall(reply)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread still in accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _exchange(conn_class, method, target, body, headers, replies=(OK,)):
    peer = _Peer(replies)
    try:
        conn = conn_class("127.0.0.1", peer.port, timeout=5)
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        result = (response.status, response.getheaders(), response.read(), response.will_close)
        conn.close()
        peer.thread.join(5)
        return peer.received, result
    finally:
        peer.close()


@pytest.mark.parametrize("method,body,headers", [
    ("POST", b'{"model": "m"}', {"Authorization": "Bearer sk-x", "Content-Type": "application/json",
                                 "User-Agent": "a b", "X-Count": 3}),
    ("GET", None, {"Authorization": "Bearer sk-x"}),
    ("POST", None, {}),  # Content-Length: 0, as http.client writes it
    ("DELETE", None, {"Host": "elsewhere.example", "Accept-Encoding": "gzip"}),
    ("POST", b"abc", {"Content-Length": "3", "X-Latin": "caf\xe9"}),
])
def test_the_request_is_written_as_http_client_writes_it(method, body, headers):
    ours, ours_result = _exchange(upstream._Connection, method, "/v1/x?a=1", body, headers)
    theirs, theirs_result = _exchange(http.client.HTTPConnection, method, "/v1/x?a=1", body,
                                      headers)
    # The peer's port differs between the two runs: the Host lines are compared apart.
    strip = lambda raw: b"\r\n".join(  # noqa: E731
        line for line in raw.split(b"\r\n") if not line.startswith(b"Host: 127.0.0.1"))
    assert strip(ours[0]) == strip(theirs[0])
    assert any(line.startswith(b"Host: ") for line in ours[0].split(b"\r\n")) == \
        any(line.startswith(b"Host: ") for line in theirs[0].split(b"\r\n"))
    assert ours_result == theirs_result


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nInjected: yes"}, {"Bad:Name": "v"},
                                     {"X-Evil": "a\nb"}])
def test_a_header_that_would_split_the_request_is_refused(headers):
    peer = _Peer([])
    try:
        conn = upstream._Connection("127.0.0.1", peer.port, timeout=5)
        with pytest.raises(ValueError):
            conn.request("POST", "/v1/x", body=b"{}", headers=headers)
        with pytest.raises(http.client.InvalidURL):
            upstream._Connection("127.0.0.1", peer.port).request("GET", "/v1/x y")
        conn.close()
    finally:
        peer.close()


def test_the_answer_head_is_read_as_http_client_reads_it():
    replies = [
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nX-Request-Id: req_1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"X-Folded: first\r\n  second\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ]
    ours, (status, headers, body, will_close) = _exchange(
        upstream._Connection, "POST", "/v1/x", b"{}", {}, replies)
    assert status == 201 and body == b"abcde" and not will_close
    assert ("X-Request-Id", "req_1") in headers
    assert [v for k, v in headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert dict(headers)["X-Folded"] == "first second"
    # The client's own header dict (one value a name, repeated ones joined).
    peer = _Peer(replies)
    try:
        conn = upstream._Connection("127.0.0.1", peer.port, timeout=5)
        conn.request("POST", "/v1/x", body=b"{}", headers={})
        response = conn.getresponse()
        assert upstream._header_dict(response)["set-cookie"] == "a=1, b=2"
        assert response.getheader("x-request-id") == "req_1"
        assert response.getheader("missing", "dflt") == "dflt"
        response.read()
    finally:
        peer.close()


def test_an_answer_without_length_closes_the_connection_and_too_many_headers_fail():
    _, (status, _, body, will_close) = _exchange(
        upstream._Connection, "GET", "/v1/x", None, {},
        [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it"])
    assert (status, body, will_close) == (200, b"all of it", True)
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        _exchange(upstream._Connection, "GET", "/v1/x", None, {}, [many])
