"""Budgets and rate limits under load, across two real gateway processes (granian, gunicorn,
uvicorn) sharing one database (and Redis, in the Redis mode): 200 concurrent calls, with the
stand-in upstream slowed so that calls stay in flight while the others are checked."""

import concurrent.futures
import contextlib
import json
import sqlite3
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

CALLS = 200
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(server, key, body, timeout=120.0):
    request = urllib.request.Request(
        server.url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def burst(servers, key, body):
    """``CALLS`` calls at once, alternating between the servers."""
    with concurrent.futures.ThreadPoolExecutor(CALLS) as pool:
        futures = [pool.submit(post, servers[i % len(servers)], key, body)
                   for i in range(CALLS)]
        return [f.result() for f in futures]


def query(site, sql, args=()):
    if getattr(site, "on_postgres", False):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return [tuple(row) for row in cursor.fetchall()]
    with contextlib.closing(sqlite3.connect(site.db_path, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def make_site(request, gateway_site, crash_upstream):
    """``make_site(**overrides)``: the servers' database is a SQLite file (WAL), or this test
    run's own PostgreSQL database (when the run is on PostgreSQL; skipped otherwise)."""
    if request.param == "sqlite":
        yield gateway_site
        return
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the run's database is not PostgreSQL (DATABASE_URL=postgres://...)")
    from tests.fixtures.server import GatewaySite

    db = connection.settings_dict
    url = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
           f"{db['PORT'] or 5432}/{db['NAME']}")

    class PostgresSite(GatewaySite):
        on_postgres = True

        def env(self, **extra):
            return super().env(DATABASE_URL=url, **extra)

    sites = []

    def make(**overrides):
        site = PostgresSite(crash_upstream.url, overrides=overrides)
        sites.append(site)
        return site

    crash_upstream.clear_requests()
    yield make
    for site in sites:
        site.close()


def chat_requests(upstream):
    return [r for r in upstream.requests() if r.get("path") == "/v1/chat/completions"]


def away_from_a_minute_boundary(seconds=30):
    """Fixed windows: start the burst early in a minute so it ends within the same one."""
    into = time.time() % 60
    if into > 60 - seconds:
        time.sleep(60 - into + 0.5)


@pytest.fixture(params=["db", "redis"])
def mode(request):
    if request.param == "redis":
        return {"RATE_LIMIT_REDIS_URL": request.getfixturevalue("redis_url")}
    return {}


@pytest.mark.parametrize("kinds", [("granian", "uvicorn")])
def test_rate_limit_of_n_lets_exactly_n_through_across_two_processes(
        make_site, crash_upstream, mode, kinds):
    limit = 37
    site = make_site(**mode)
    out = site.manage("openai_limits", "set", "--user", "crash", "--rpm", str(limit))
    assert out.returncode == 0, out.stderr
    servers = [site.start_server(kind, threads=8) for kind in kinds]
    crash_upstream.fault(path="/v1/chat/completions", kind="delay", seconds=0.4, times=-1)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8}
    away_from_a_minute_boundary()
    started = time.time() // 60
    results = burst(servers, site.key, body)
    assert time.time() // 60 == started, "the burst crossed a minute boundary"
    crash_upstream.clear_faults()
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) == limit, [r[0] for r in results]
    assert len(refused) == CALLS - limit, site.logs()[-6000:]
    for _status, headers, body_ in refused:
        headers = {k.lower(): v for k, v in headers.items()}
        assert body_["error"]["code"] == "rate_limit_exceeded"
        assert headers["x-ratelimit-limit-requests"] == str(limit)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["retry-after"]) >= 1
    remaining = sorted(int({k.lower(): v for k, v in h.items()}[
        "x-ratelimit-remaining-requests"]) for _, h, _ in ok)
    assert remaining == list(range(limit))  # each admitted call counted once, in order
    # Both processes served calls; the upstream saw exactly the admitted ones.
    assert len(chat_requests(crash_upstream)) == limit
    rows = query(site, "SELECT outcome, COUNT(*) FROM openai_django_call GROUP BY outcome")
    assert dict(rows) == {"ok": limit, "rejected": CALLS - limit}


@pytest.mark.parametrize("max_tokens", [8, None], ids=["estimate_is_a_bound", "underestimate"])
def test_budget_never_overspent_beyond_the_bound_across_two_processes(
        make_site, crash_upstream, max_tokens):
    threads = 4  # per server: at most 2 x 4 calls in flight at once
    budget = 600
    overrides = {"ESTIMATED_OUTPUT_TOKENS": 1}
    site = make_site(**overrides)
    out = site.manage("openai_limits", "set", "--user", "crash", "--daily-tokens", str(budget))
    assert out.returncode == 0, out.stderr
    servers = [site.start_server(kind, threads=threads) for kind in ("granian", "gunicorn")]
    crash_upstream.fault(path="/v1/chat/completions", kind="delay", seconds=0.3, times=-1)
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "tell me a story about a teapot"}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    results = burst(servers, site.key, body)
    crash_upstream.clear_faults()
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert ok and refused and len(ok) + len(refused) == CALLS
    assert {r[2]["error"]["code"] for r in refused} == {"insufficient_quota"}
    assert len(chat_requests(crash_upstream)) == len(ok)
    [(spent, reserved, charged)] = query(
        site, "SELECT spent_tokens, reserved_tokens, calls FROM openai_django_budgetwindow")
    used = [r[2]["usage"]["total_tokens"] for r in ok]
    assert spent == sum(used) and reserved == 0 and charged == len(ok)
    assert query(site, "SELECT COUNT(*) FROM openai_django_budgetreservation") == [(0,)]
    if max_tokens:
        # The estimate (a quarter of the body's bytes + max_tokens) is an upper bound of
        # the real usage: never overspent.
        assert spent <= budget
    else:
        # Each call in flight may overspend by what it uses beyond its estimate, and at most
        # 2 x threads calls are in flight when the limit is reached.
        estimate = -(-len(json.dumps(body, separators=(",", ":")).encode()) // 4) + 1
        beyond = max(u - estimate for u in used)
        assert beyond > 0  # this case does underestimate
        assert spent <= budget + 2 * threads * beyond, (spent, beyond)
    rows = dict(query(site, "SELECT outcome, COUNT(*) FROM openai_django_call "
                            "GROUP BY outcome"))
    assert rows == {"ok": len(ok), "rejected": len(refused)}
