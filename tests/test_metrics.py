"""The Prometheus endpoint: it parses with prometheus_client's own parser, its counters equal
the records (answered, failed, refused calls), it is protected, and with several gateway
processes (multiprocess mode) a scrape of any of them still equals the records."""

import math
import os
import sqlite3
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from openai_django import errors, recorder
from openai_django.invocation import from_kwargs
from openai_django.models import Call

TOKEN = "metrics-token-0123456789"
FINAL_COUNTERS = ("calls", "errors", "refusals", "tokens", "cost_usd")


def enable(settings, **config):
    settings.OPENAI_DJANGO = {**(getattr(settings, "OPENAI_DJANGO", {}) or {}),
                              "METRICS": config or {"TOKEN": TOKEN}}


def parse(text):
    """{(metric, labels as a sorted tuple): value} of the counters' ``_total`` samples and the
    histograms' ``_count`` and ``_sum``."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count", "_sum")):
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def scrape(url, token=TOKEN):
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def delta(after, before):
    return {key: value - before.get(key, 0) for key, value in after.items()
            if not math.isclose(value, before.get(key, 0), abs_tol=1e-12)}


REASONS = {"insufficient_quota": "budget", "rate_limit_exceeded": "rate_limit"}


def expected_from(rows):
    """What the scrape must say of these records (dicts of the call columns)."""
    out = defaultdict(float)

    def key(name, **labels):
        return (f"openai_django_{name}", tuple(sorted(labels.items())))

    for row in rows:
        labels = {"operation": row["operation"], "model": row["model"],
                  "status": row["status"]}
        out[key("calls_total", outcome=row["outcome"], **labels)] += 1
        rejected = row["outcome"] == "rejected"
        if row["status"] != "succeeded":
            error = row["error"] or {}
            code = error.get("code") or error.get("type") or str(row["response_status"])
            out[key("errors_total", outcome=row["outcome"], code=code, **labels)] += 1
            if rejected:
                status = row["response_status"]
                reason = REASONS.get(code) or ("policy" if status == 403 else "rate_limit"
                                               if status == 429 else "invalid")
                out[key("refusals_total", operation=row["operation"], model=row["model"],
                        reason=reason, code=code)] += 1
        if not rejected:
            for name, column in (("call_duration_seconds", "latency_ms"),
                                 ("upstream_duration_seconds", "upstream_latency_ms")):
                if row[column] is not None:
                    out[key(f"{name}_count", **labels)] += 1
                    out[key(f"{name}_sum", **labels)] += row[column] / 1000
        for kind in ("prompt", "completion", "cached", "reasoning"):
            column = "prompt_tokens" if kind == "prompt" else (
                "completion_tokens" if kind == "completion" else f"{kind}_tokens")
            if row[column]:
                out[key("tokens_total", type=kind, **labels)] += row[column]
        if row["cost_usd"]:
            out[key("cost_usd_total", **labels)] += float(Decimal(str(row["cost_usd"])))
    return dict(out)


def assert_matches(scraped, expected):
    scraped = {key: value for key, value in scraped.items() if value}  # series made at zero
    assert set(scraped) == set(expected), (
        f"missing: {set(expected) - set(scraped)}\nextra: {set(scraped) - set(expected)}")
    for key, value in expected.items():
        assert math.isclose(scraped[key], value, rel_tol=1e-9, abs_tol=1e-9), (key, value,
                                                                              scraped[key])


COLUMNS = ("operation", "model", "status", "outcome", "error", "response_status",
           "latency_ms", "upstream_latency_ms", "prompt_tokens", "completion_tokens",
           "cached_tokens", "reasoning_tokens", "cost_usd")


def records():
    return [dict(zip(COLUMNS, values)) for values in Call.objects.values_list(*COLUMNS)]


# -- in one process ------------------------------------------------------------------------------

def test_scrape_matches_the_records_after_real_calls(http, sdk, upstream, live_server, settings,
                                                     user, api_key):
    enable(settings)
    url = live_server.url + "/metrics"
    before = scrape(url)
    for _ in range(3):
        sdk.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "Hi there"}])
    list(sdk.chat.completions.create(model="gpt-4.1", stream=True,
                                     stream_options={"include_usage": True},
                                     messages=[{"role": "user", "content": "Stream it"}]))
    first = sdk.responses.create(model="o3", input="Think it over.",
                                 reasoning={"effort": "medium"})
    sdk.responses.create(model="o3", input="Again.", previous_response_id=first.id,
                         reasoning={"effort": "low"})
    sdk.embeddings.create(model="text-embedding-3-small", input="vector me")
    # An upstream error, and a request the gateway refuses itself.
    upstream.fault(path="/v1/chat/completions", kind="status", status=500, times=1)
    assert http.post(f"{http.base}/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    ).status_code == 500
    assert http.post(f"{http.base}/chat/completions", json={"model": "gpt-4o-mini"}
                     ).status_code == 400
    # A nonsense model name of a refused call is counted as "other".
    assert http.post(f"{http.base}/chat/completions", json={"model": "zz-no-such-model-1"}
                     ).status_code == 400
    # Refusals the way the budget, rate-limit and pre-call hook checks record them.
    for exc in (errors.Throttled("Over the limit: 10 requests per minute."),
                errors.Throttled("Monthly budget of $5 spent.", code="insufficient_quota"),
                errors.PermissionDenied("gpt-4.1 is not allowed for this group.",
                                        code="model_not_allowed")):
        invocation = from_kwargs("createChatCompletion", api_key=api_key, model="gpt-4.1",
                                 messages=[{"role": "user", "content": "x"}])
        recorder.reject(invocation, exc)

    rows = records()
    for row in rows:
        if row["model"] == "zz-no-such-model-1":
            row["model"] = "other"
    assert len(rows) == 13
    assert {r["outcome"] for r in rows} >= {"ok", "upstream_error", "rejected"}
    assert any(r["cached_tokens"] for r in rows) and any(r["reasoning_tokens"] for r in rows)
    scraped = delta(scrape(url), before)
    assert_matches(scraped, expected_from(rows))
    refusals = Counter()
    for (name, labels), value in scraped.items():
        if name == "openai_django_refusals_total":
            refusals[dict(labels)["reason"]] += value
    assert refusals == {"budget": 1, "rate_limit": 1, "policy": 1, "invalid": 2}


def test_the_endpoint_is_protected(client, admin_client, live_server, settings, django_user_model,
                                   api_key):
    url = "/metrics"
    assert client.get(url).status_code == 404  # off by default
    enable(settings, TOKEN=["old-token", TOKEN])
    assert client.get(url).status_code == 403
    assert client.get(url).headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {api_key}").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get(url, HTTP_AUTHORIZATION="Bearer old-token").status_code == 200
    assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    assert admin_client.get(url).status_code == 403  # staff sessions only when STAFF is on
    enable(settings, STAFF=True)
    response = admin_client.get(url)
    assert response.status_code == 200 and b"# TYPE openai_django_calls" in response.content
    assert response["Cache-Control"].startswith("max-age=0")
    someone = django_user_model.objects.create_user(username="carol", password="pw-carol-12")
    client.force_login(someone)
    assert client.get(url).status_code == 403
    enable(settings, PUBLIC=True)
    assert requests.get(live_server.url + url, timeout=10).status_code == 200


def test_nothing_is_counted_while_metrics_are_off(sdk, upstream, live_server, settings):
    enable(settings)
    url = live_server.url + "/metrics"
    before = scrape(url)
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "METRICS": None}
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert requests.get(url, timeout=10).status_code == 404
    enable(settings)
    assert delta(scrape(url), before) == {}


def test_checks_warn_about_an_endpoint_nobody_or_anybody_reads(settings):
    from openai_django.metrics import check_metrics

    assert check_metrics(None) == []
    enable(settings, STAFF=False)
    assert [e.id for e in check_metrics(None)] == ["openai_django.W020"]
    enable(settings, PUBLIC=True)
    assert [e.id for e in check_metrics(None)] == ["openai_django.W021"]
    enable(settings, TOKEN="x")
    assert check_metrics(None) == []


# -- several processes -------------------------------------------------------------------------

def site_records(site):
    with sqlite3.connect(site.db_path, timeout=20) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM openai_django_call")]
    import json

    for row in rows:
        row["error"] = json.loads(row["error"]) if row["error"] else None
    return rows


@pytest.mark.slow
def test_two_gateway_processes_scrape_the_same_counts_as_the_records(gateway_site, crash_upstream,
                                                                     tmp_path, monkeypatch):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    site = gateway_site(METRICS={"TOKEN": TOKEN})
    sync = site.start_server("granian", workers=2, threads=4)
    asgi = site.start_server("uvicorn", workers=1)
    servers = [sync, asgi]
    headers = {**site.headers, "Content-Type": "application/json"}

    def post(i):
        server = servers[i % 2]
        body = {"model": "gpt-4o-mini" if i % 3 else "gpt-4.1",
                "messages": [{"role": "user", "content": f"Hello number {i}"}]}
        if i % 10 == 0:
            body.pop("messages")  # refused by the gateway (400), recorded as rejected
        if i % 7 == 0:
            body["stream"] = True
        response = requests.post(f"{server.url}/v1/chat/completions", json=body,
                                 headers=headers, timeout=30)
        response.content  # noqa: B018 (read the whole stream)
        return response.status_code

    crash_upstream.fault(path="/v1/chat/completions", kind="status", status=503, times=2)
    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(post, range(60)))
    assert statuses[400] == 6 and statuses[503] == 2 and statuses[200] == 52, statuses
    rows = site_records(site)
    assert len(rows) == 60
    # Several processes counted (one file per process and metric type).
    pids = {name.rsplit("_", 1)[1] for name in os.listdir(metrics_dir)}
    assert len(pids) >= 2, os.listdir(metrics_dir)
    expected = expected_from(rows)
    for server in servers:
        request = urllib.request.Request(server.url + "/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                request, timeout=10) as response:
            scraped = parse(response.read().decode())
        assert_matches(scraped, expected)
    assert site.get(sync, "/metrics")[0] == 403  # the client's key is not the metrics token


@pytest.mark.slow
@pytest.mark.parametrize("celery_broker", ["filesystem"], indirect=True)
def test_background_calls_count_in_the_worker_that_finished_them(
        celery_broker, http, upstream, settings, celery_worker_factory, tmp_path, monkeypatch):
    """A Celery worker counts the calls it performs into the host's multiprocess directory,
    where any web process's scrape reads them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from tests.fixtures.celery_worker import wait_for

    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    enable(settings)
    celery_worker_factory()
    upstream.fault(path="/v1/chat/completions", kind="status", status=400, message="no",
                   times=1)
    ids = []
    for text in ("one", "two", "three"):
        response = http.post(f"{http.base}/chat/completions", headers={
            "Prefer": "respond-async"}, json={"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": text}]})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    wait_for(lambda: Call.objects.filter(pk__in=ids, finished_at__isnull=False).count() == 3,
             60, message="the worker finishing the calls")
    rows = records()
    assert sorted(r["status"] for r in rows) == ["failed", "succeeded", "succeeded"]
    registry = CollectorRegistry()
    registry.register(MultiProcessCollector(None, path=str(metrics_dir)))
    assert_matches(parse(generate_latest(registry).decode()), expected_from(rows))
