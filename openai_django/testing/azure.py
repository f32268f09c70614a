"""A stand-in speaking Azure OpenAI's dialect, in front of a :class:`StandinServer`.

``AzureStandin(backend, api_key="...", deployments={"prod-4o": "gpt-4o"}).start()`` serves,
on loopback, in threads of its own:

* ``/openai/deployments/{deployment}/{operation}?api-version=...`` (chat, completions,
  embeddings, images, audio): the deployment's model is what the backend is asked for;
* ``/openai/{files,batches,...}?api-version=...``: the objects, as the backend keeps them;
* ``/openai/v1/{operation}`` (the newer style; ``api-version`` optional): OpenAI's paths;

with Azure's ``api-key`` header required (``Authorization`` alone is refused, as by a key-only
resource), ``api-version`` required on the older style (one of ``API_VERSIONS``), 404
``DeploymentNotFound`` for an unknown deployment, an ``apim-request-id`` header on every
answer, and error bodies in Azure's shape (``{"error": {"code": "...", "message": "..."}}``:
no ``type``, no ``param``). Streams are relayed chunk by chunk. ``log`` holds ``{"method",
"path", "query", "api_key": bool, "authorization": bool, "model"}`` per request.
"""

import http.client
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_VERSIONS = ("2024-06-01", "2024-10-21", "2025-01-01-preview", "preview")
DEPLOYMENT_OPERATIONS = ("chat/completions", "completions", "embeddings", "images/generations",
                         "audio/transcriptions", "audio/translations", "audio/speech")


class AzureStandin:
    def __init__(self, backend, *, api_key, deployments, host="127.0.0.1"):
        self.backend, self.api_key, self.deployments = backend, api_key, dict(deployments)
        self.host = host
        self.log = []
        self.httpd = None

    @property
    def url(self):
        """The resource's endpoint (``https://NAME.openai.azure.com`` on Azure)."""
        return f"http://{self.host}:{self.httpd.server_address[1]}"

    def start(self):
        self.httpd = ThreadingHTTPServer((self.host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _azure_error(status, code, message):
    return status, json.dumps({"error": {"code": code, "message": message}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def _reply(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("apim-request-id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        entry = {"method": self.command, "path": parts.path, "query": parts.query,
                 "api_key": self.headers.get("api-key") is not None,
                 "authorization": self.headers.get("Authorization") is not None}
        owner.log.append(entry)
        if self.headers.get("api-key") != owner.api_key:
            return self._reply(*_azure_error(
                401, "401", "Access denied due to invalid subscription key or wrong API "
                "endpoint. Make sure to provide a valid key for an active subscription and use "
                "a correct regional API endpoint for your resource."))
        path = parts.path
        model = None
        if path.startswith("/openai/v1/"):
            rest = path[len("/openai/v1/"):]
        elif path.startswith("/openai/"):
            version = (query.get("api-version") or [""])[0]
            if version not in API_VERSIONS:
                return self._reply(*_azure_error(
                    404, "404", "Resource not found" if version else
                    "Missing 'api-version' query parameter."))
            rest = path[len("/openai/"):]
            if rest.startswith("deployments/"):
                _, deployment, rest = rest.split("/", 2)
                if rest not in DEPLOYMENT_OPERATIONS:
                    return self._reply(*_azure_error(404, "404", "Resource not found"))
                model = owner.deployments.get(deployment)
                if model is None:
                    return self._reply(*_azure_error(
                        404, "DeploymentNotFound", "The API deployment for this resource "
                        "does not exist. If you created the deployment within the last 5 "
                        "minutes, please wait a moment and try again."))
            elif rest.split("/")[0] in ("chat", "completions", "embeddings"):
                return self._reply(*_azure_error(404, "404", "Resource not found"))
        else:
            return self._reply(*_azure_error(404, "404", "Resource not found"))
        content_type = self.headers.get("Content-Type", "")
        if model is not None and body and content_type.startswith("application/json"):
            data = json.loads(body)
            data["model"] = model
            body = json.dumps(data).encode()
        entry["model"] = model or (json.loads(body).get("model") if body and
                                   content_type.startswith("application/json") else None)
        backend_query = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "api-version")
        self._forward(rest, backend_query, body, content_type)

    def _forward(self, rest, query, body, content_type):
        owner = self.server.owner
        conn = http.client.HTTPConnection("127.0.0.1", owner.backend.port, timeout=30)
        headers = {"Authorization": f"Bearer {owner.backend.knobs.get('api_key') or 'x'}"}
        if content_type:
            headers["Content-Type"] = content_type
        target = f"/v1/{rest}" + (f"?{query}" if query else "")
        try:
            conn.request(self.command, target, body=body or None, headers=headers)
            response = conn.getresponse()
            ctype = response.getheader("Content-Type", "application/json")
            if ctype.startswith("text/event-stream"):
                self.send_response(response.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("apim-request-id", str(uuid.uuid4()))
                self.end_headers()
                while chunk := response.read1(65536):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            data = response.read()
            if response.status >= 400 and ctype.startswith("application/json"):
                try:
                    error = json.loads(data).get("error") or {}
                except ValueError:
                    error = {}
                # Azure's shape: a code (the status when there is no better one), a message.
                data = json.dumps({"error": {
                    "code": error.get("code") or str(response.status),
                    "message": error.get("message") or "error"}}).encode()
            self._reply(response.status, data, ctype)
        finally:
            conn.close()
