"""A small forward proxy on loopback, for tests: ``CONNECT`` tunnels and absolute-form HTTP.

``with ForwardProxy(auth=("user", "secret")) as proxy:`` then ``proxy.url``
(``http://127.0.0.1:PORT``) as ``HTTPS_PROXY`` or a ``proxy`` setting. ``proxy.log`` holds
``(method, target)`` of every request it was sent (``("CONNECT", "host:port")`` for a tunnel,
``("POST", "http://host:port/v1/...")`` for plain HTTP), ``proxy.refused`` those it answered
407 for lacking the credentials. It relays bytes and nothing else (TLS stays end to end),
in threads of its own; :meth:`stop` closes the listener and every open connection.
"""

import base64
import selectors
import socket
import threading
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self, host="127.0.0.1", port=0, *, auth=None):
        self.host, self.port = host, port
        self.auth = None
        if auth is not None:
            self.auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.log, self.refused = [], []
        self._sockets = set()
        self._lock = threading.Lock()
        self._listener = None
        self._thread = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def url_with_auth(self, user, password):
        return f"http://{user}:{password}@{self.host}:{self.port}"

    def start(self):
        self._listener = socket.create_server((self.host, self.port))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name="test-forward-proxy")
        self._thread.start()
        return self

    def stop(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def clear(self):
        self.log.clear()
        self.refused.clear()

    def _track(self, sock):
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept(self):
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if self.auth is not None and headers.get("proxy-authorization") != self.auth:
                self.refused.append((method, target))
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                               b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.log.append((method, target))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                try:
                    upstream = self._track(socket.create_connection(
                        (host.strip("[]"), int(port)), timeout=10))
                except OSError:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                upstream.settimeout(None)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                parts = urlsplit(target)
                upstream = self._track(socket.create_connection(
                    (parts.hostname, parts.port or 80), timeout=10))
                upstream.settimeout(None)
                origin = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = [line for line in lines[1:]
                        if not line.lower().startswith("proxy-authorization:")]
                upstream.sendall(("\r\n".join([f"{method} {origin} {version}", *kept])
                                  + "\r\n\r\n").encode("latin-1") + rest)
            self._pipe(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    try:
                        sock.close()
                    except OSError:
                        pass

    @staticmethod
    def _pipe(a, b):
        """Relay bytes both ways until either side closes. (Plain HTTP: every request of a
        kept connection goes to the first request's origin, which is all our clients do.)"""
        with selectors.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
