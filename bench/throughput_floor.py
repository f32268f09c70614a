"""The throughput floor: what this machine gives a bare WSGI proxy of the chat call.

``python -m bench.throughput_floor [--rounds 3] [--seconds 5] [--connections 64]``

Scenario 2 (``throughput``) loads the gateway with wrk at c=64 while the stand-in and wrk share
the box. This script loads, the same way and interleaved round by round, three things under
the same server (granian WSGI, 2 workers x 512 threads):

- ``proxy``: :func:`app`, the least a gateway can do for the call: read the body, send it to
  the stand-in with the gateway's own keep-alive client (:class:`UpstreamClient`) and return
  its answer; no Django, no key, no validation, no record;
- ``proxy+narrow`` and ``proxy+row`` (``--records``): the proxy with a write-ahead record through
  the gateway's own writer (:func:`_recording`), what recording costs any gateway here;
- ``gateway (unrecorded)`` and ``gateway (recorded)``: the gateway itself, recording off and on;
- ``direct``: the stand-in alone.

It prints one JSON line: each target's median req/s, p50, p99 and server CPU per request. If the
bare proxy's req/s is under a throughput target, no gateway on this machine reaches it; what the
gateway loses against the proxy is its own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading

_client = []


def app(environ, start_response):
    """POST the request's body to the stand-in's ``/chat/completions``; its status and body
    back."""
    from openai_django.upstream import UpstreamClient

    if environ["REQUEST_METHOD"] == "GET":  # the harness's readiness probe
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if not _client:
        _client.append(UpstreamClient(os.environ["FLOOR_UPSTREAM"], os.environ["FLOOR_KEY"],
                                      pool_size=512))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    record = _recording()
    if record is not None:
        pk = record.begin()
    response = _client[0].send("POST", "/chat/completions", body=body,
                               content_type="application/json")
    if record is not None:
        record.end(pk)
    start_response(f"{response.status} OK", [("Content-Type", "application/json"),
                                             ("Content-Length", str(len(response.body)))])
    return [response.body]


_record = []
_record_lock = threading.Lock()


def _recording():
    """``FLOOR_RECORD``: the write-ahead record the proxy keeps, through the gateway's own group
    commit (:mod:`openai_django.writer`: the same batches, the same cross-process lock, the same
    per-thread Django connections), with values built once, so that only the database's and the
    writer's work is left of a recorded call:

    - ``row``: the gateway's own INSERT of a call row (every column, the 13 indexes) before the
      upstream is asked and its finish UPDATE (``FINISH_FIELDS``) after, with the values of a
      real recorded call copied (a new primary key each time);
    - ``narrow``: the least a write-ahead record can be: a row of four columns in a table with
      no index but its primary key, inserted before and updated after.
    """
    mode = os.environ.get("FLOOR_RECORD")
    if not mode:
        return None
    if not _record:
        with _record_lock:  # 512 threads may take their first call at once
            if not _record:
                _record.append(_Record(mode))
    return _record[0]


class _Record:
    def __init__(self, mode):
        import django

        django.setup()
        from django.db import connection

        from openai_django.models import Call
        from openai_django.recorder import FINISH_FIELDS

        self.direct = mode.endswith("-direct")  # each thread commits its own, no group commit
        mode = self.mode = mode.removesuffix("-direct")
        if mode == "narrow":
            with connection.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS floor_narrow (id char(32) PRIMARY KEY,"
                               " created varchar(32), status varchar(16), response text)")
            self.insert = ("INSERT INTO floor_narrow (id, created, status, response) "
                           "VALUES (%s, %s, %s, %s)")
            self.update = "UPDATE floor_narrow SET status = %s, response = %s WHERE id = %s"
            return
        call = Call.objects.filter(status=Call.Status.SUCCEEDED).order_by("-created").first()
        if call is None:
            raise RuntimeError("FLOOR_RECORD=row copies a recorded call: make one first")
        manager = Call.objects
        self.insert, plan = manager._plan(connection, "insert", None)
        self.insert_params = [convert(get(call)) for get, convert in plan]
        self.pk_index = [f.attname for f in Call._meta.local_concrete_fields].index("id")
        self.update, plan = manager._plan(connection, "update", FINISH_FIELDS)
        self.update_params = [convert(get(call)) for get, convert in plan]
        self.pk = Call._meta.pk

    def begin(self):
        import uuid

        from django.db import connection

        pk = uuid.uuid4()
        if self.mode == "narrow":
            params = [pk.hex, "2026-12-02 00:00:00", "running", ""]
        else:
            params = list(self.insert_params)
            params[self.pk_index] = self.pk.get_db_prep_value(pk, connection)
        self._write(self.insert, params, "insert")
        return pk

    def end(self, pk):
        from django.db import connection

        if self.mode == "narrow":
            params = ["succeeded", '{"id": "chatcmpl-floor"}', pk.hex]
        else:
            params = [*self.update_params, self.pk.get_db_prep_value(pk, connection)]
        self._write(self.update, params, "update")

    def _write(self, sql, params, kind):
        from django.db import connection

        from openai_django import writer

        if self.direct:
            writer.execute(connection, sql, params)
        else:
            writer.get_writer("default").submit(sql, params, kind=kind)


def main(argv=None):
    from bench import scenarios
    from bench.harness import VENV_BIN, Harness, Server, free_port
    from bench.loadgen import WrkScript, run_wrk

    parser = argparse.ArgumentParser(prog="python -m bench.throughput_floor",
                                     description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-gateway", action="store_true", help="the proxy and direct only")
    parser.add_argument("--records", default="narrow,row",
                        help="the recording proxies beside the bare one (FLOOR_RECORD modes)")
    opts = parser.parse_args(argv)
    body = json.dumps(scenarios.CHAT).encode()
    loadavg = os.getloadavg()
    with Harness() as harness:
        upstream = harness.start_upstream()
        db = harness.sqlite("floor")
        harness.prepare(db)
        gw_headers = {"Authorization": f"Bearer {harness.client_key}",
                      "Content-Type": "application/json"}
        gateways = []
        if not opts.no_gateway:
            script = WrkScript(harness.workdir, "floor-gw", body=body, headers=gw_headers)
            for label, record in (("unrecorded", False), ("recorded", True)):
                gateway = harness.start_gateway(db, server="granian-wsgi", workers=2,
                                                threads=512, record=record,
                                                name=f"floor-{label}")
                gateways.append((label, gateway.url + "/v1/chat/completions", script,
                                 gateway))
            # A recorded call for the ``row`` proxy to copy.
            scenarios.check_contract(scenarios.Context(harness, gateway, scenarios.Params()))
        targets = []
        records = [""] + ([m for m in opts.records.split(",") if m] if gateways else [])
        for mode in records:
            label = f"proxy+{mode}" if mode else "proxy"
            port = free_port()
            # The client reads the gateway's settings (its proxy from the environment).
            proxy = Server(name=f"floor-{label}", port=port, env={
                **harness.django_env(db), "FLOOR_UPSTREAM": upstream.url,
                "FLOOR_KEY": scenarios.UPSTREAM_KEY, "FLOOR_RECORD": mode}, cmd=[
                str(VENV_BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "2", "--blocking-threads", "512",
                "--backpressure", "512", "--backlog", "4096", "--no-ws", "--log-level",
                "warning", "bench.throughput_floor:app"])
            proxy.start(harness.workdir)
            harness.servers.append(proxy)
            targets.append((label, proxy.url + "/v1/chat/completions",
                            WrkScript(harness.workdir, f"floor-{label}", body=body,
                                      headers=gw_headers), proxy))
        targets += gateways
        targets.append(("direct", upstream.url + "/chat/completions",
                        WrkScript(harness.workdir, "floor-direct", body=body,
                                  headers={"Authorization": f"Bearer {scenarios.UPSTREAM_KEY}",
                                           "Content-Type": "application/json"}), None))
        for _, url, script, _ in targets:
            run_wrk(url, script, connections=opts.connections, seconds=1)
        results = {label: [] for label, *_ in targets}
        for _ in range(opts.rounds):
            for label, url, script, server in targets:
                before = server.cpu_seconds() if server else 0.0
                r = run_wrk(url, script, connections=opts.connections, seconds=opts.seconds)
                cpu = ((server.cpu_seconds() - before) * 1e6 / max(1, r.requests)
                       if server else None)
                results[label].append((r.rps, r.p50_ms, r.p99_ms, r.errors, cpu))
    out = {"connections": opts.connections, "rounds": opts.rounds, "seconds": opts.seconds,
           "loadavg_before": loadavg, "loadavg_after": os.getloadavg()}
    for label, rows in results.items():
        out[label] = {
            "rps": [round(x[0]) for x in rows],
            "rps_median": round(statistics.median(x[0] for x in rows)),
            "p50_ms": round(statistics.median(x[1] for x in rows), 2),
            "p99_ms": round(statistics.median(x[2] for x in rows), 2),
            "errors": sum(x[3] for x in rows),
            "cpu_us_per_request": (round(statistics.median(x[4] for x in rows))
                                   if rows[0][4] is not None else None)}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
