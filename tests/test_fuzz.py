"""No input makes the gateway, or the stand-in upstream, answer a 5xx of its own: Schemathesis
over both bundled specs (``openapi.yaml`` 1.2.0 and ``openapi-2.3.0.yaml``), a few positive and
negative cases per operation (see :mod:`tests.fuzzing`).

* the stand-in (``python -m openai_django.testing``, a child process of its own): every
  operation of the spec, organization admin included; any 5xx is a stand-in bug;
* the gateway over real HTTP (pytest-django's live server) in front of a stand-in of its own,
  with a site key: every non-admin operation; a 5xx fails unless the stand-in answered that
  same status to that same request (found in its request log by the ``User-Agent`` naming
  the case, which the gateway forwards): those are relayed and reported as stand-in bugs
  (a warning), not as the gateway's;
* the organization-admin operations through the gateway (not served by default): one case
  each, answered 404.

A failure lists each case: the check, method and URL, a body excerpt, the status, a response
excerpt and a curl command (``$KEY`` in it stands for that run's key). Every test prints one
line: seed, operations covered, cases, statuses, seconds, and its replay command.

Replay a failure: the same seed and examples, narrowed to the operation (cases are drawn per
operation from the seed and its label, so narrowing keeps them)::

    FUZZ_SEED=<seed> FUZZ_EXAMPLES=<n> FUZZ_OPS='^POST /chat/completions$' \\
        .venv/bin/python -m pytest tests/test_fuzz.py -k 'gateway_answers and 2.3.0'

``FUZZ_SEED`` unset: a fresh random seed each run (printed, and in every failure). Budget:
``FUZZ_BUDGET`` seconds per spec and target (default 150), whole module ~1-2 minutes.
"""

import warnings

import pytest

from openai_django.testing import StandinServer
from tests import fuzzing

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fuzz-0000"
VERSIONS = sorted(fuzzing.SPECS)
STANDIN_EXAMPLES = 5
GATEWAY_EXAMPLES = 3


@pytest.fixture(scope="module")
def seed():
    return fuzzing.env_seed()


@pytest.fixture(scope="module")
def fuzz_standin():
    """A stand-in of this module's own (fuzzing leaves files, stores, jobs behind)."""
    server = StandinServer(api_key=UPSTREAM_KEY, log_size=2000)
    server.start()
    server.configure(ttft_ms=0, gap_ms=0, events=4)
    yield server
    server.stop()


def emit(request, capsys, report):
    """The summary line on the terminal (even when output is captured) and in the JUnit XML;
    budget overruns and relayed stand-in 5xx as warnings."""
    test = node(request)
    request.node.user_properties.append(("fuzz", report.summary(test)))
    with capsys.disabled():
        print("\n" + report.summary(test))
    for missed in report.not_covered[:1]:
        warnings.warn(f"{report.target} {report.version}: budget of {fuzzing.env_budget()} s "
                      f"spent, {len(report.not_covered)} operations not covered "
                      f"(first: {missed})", stacklevel=2)
    for note in report.notes:
        warnings.warn(f"{report.target} {report.version}: {note.render()}", stacklevel=2)


def node(request):
    return request.node.nodeid.split("::", 1)[1]


# -- the stand-in ------------------------------------------------------------------------------

def server_error(kind):
    def check(case, response):
        if fuzzing.is_server_error(case, response):
            return fuzzing.Finding(kind, case.operation.label, response.status_code,
                                   fuzzing.describe_request(response),
                                   fuzzing.excerpt(response.text), "")
        return None
    return check


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.once  # the stand-in alone: no database
def test_standin_answers_no_5xx(version, fuzz_standin, seed, capsys, request):
    schema, load_seconds = fuzzing.load(version)
    report = fuzzing.Report("stand-in", version, seed, fuzzing.env_examples(STANDIN_EXAMPLES),
                            load_seconds)
    ops = fuzzing.operations(schema)
    if not ops:
        pytest.skip("FUZZ_OPS selects no operation of this spec")
    fuzzing.fuzz(report, ops, base_url=fuzz_standin.url,
                 headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
                 check=server_error("stand-in 5xx"), budget=fuzzing.env_budget())
    emit(request, capsys, report)
    assert report.cases > 0
    assert not report.findings and not report.errors, report.failure(node(request))


# -- the gateway -------------------------------------------------------------------------------

@pytest.fixture
def fuzz_gateway(live_server, fuzz_standin, settings, media_root, api_key):
    """``(base URL …/v1, headers)`` of the gateway in front of this module's stand-in."""
    current = dict(getattr(settings, "OPENAI_DJANGO", {}) or {})
    current.update({"BASE_URL": fuzz_standin.url, "API_KEY": UPSTREAM_KEY})
    settings.OPENAI_DJANGO = current
    fuzz_standin.clear_faults()
    return live_server.url + "/v1", {"Authorization": f"Bearer {api_key}"}


def gateway_check(standin):
    """A gateway 5xx is its own unless the stand-in answered that status to that request."""
    def check(case, response):
        if not fuzzing.is_server_error(case, response):
            return None
        agent = response.request.headers.get("User-Agent")
        # The gateway sends one User-Agent: the client's agent, then its own
        # ("openai-django-fuzz/7 openai-django/0.1.0").
        upstream = [entry for entry in standin.requests()
                    if (entry.get("headers", {}).get("user-agent") or "").split(" ")[0]
                    == agent]
        relayed = bool(upstream) and upstream[-1].get("status") == response.status_code
        try:
            error = response.json().get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if error.get("code") == "internal_error":
            relayed = False  # the gateway's own crash, whatever the upstream said
        kind = "relayed stand-in 5xx" if relayed else "gateway 5xx"
        seen = (f"stand-in answered {upstream[-1].get('status')}" if upstream
                else "never reached the stand-in")
        return fuzzing.Finding(kind, case.operation.label, response.status_code,
                               fuzzing.describe_request(response),
                               f"({seen}) {fuzzing.excerpt(response.text)}", "")
    return check


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("version", VERSIONS)
def test_gateway_answers_no_5xx_of_its_own(version, fuzz_gateway, fuzz_standin, seed, capsys,
                                           request):
    base_url, headers = fuzz_gateway
    schema, load_seconds = fuzzing.load(version)
    report = fuzzing.Report("gateway", version, seed, fuzzing.env_examples(GATEWAY_EXAMPLES),
                            load_seconds)
    ops = fuzzing.operations(schema, admin=False)
    if not ops:
        pytest.skip("FUZZ_OPS selects no operation of this spec")
    fuzzing.fuzz(report, ops, base_url=base_url,
                 headers=headers, check=gateway_check(fuzz_standin),
                 budget=fuzzing.env_budget())
    emit(request, capsys, report)
    assert report.cases > 0
    assert not report.findings and not report.errors, report.failure(node(request))


def not_found(case, response):
    if response.status_code != 404:
        return fuzzing.Finding("admin operation not 404", case.operation.label,
                               response.status_code, fuzzing.describe_request(response),
                               fuzzing.excerpt(response.text), "")
    return None


@pytest.mark.django_db(transaction=True)
def test_gateway_admin_operations_are_404(fuzz_gateway, fuzz_standin, seed, capsys, request):
    base_url, headers = fuzz_gateway
    schema, load_seconds = fuzzing.load("2.3.0")
    ops = fuzzing.operations(schema, admin=True)
    if not ops:
        pytest.skip("FUZZ_OPS selects no admin operation")
    report = fuzzing.Report("gateway (admin)", "2.3.0", seed, 1, load_seconds)
    fuzz_standin.clear_requests()
    fuzzing.fuzz(report, ops, base_url=base_url, headers=headers, check=not_found,
                 budget=fuzzing.env_budget())
    emit(request, capsys, report)
    assert report.cases > 0
    assert not report.findings and not report.errors, report.failure(node(request))
    assert fuzz_standin.requests() == []


@pytest.mark.django_db(transaction=True)
def test_a_relayed_5xx_is_told_from_the_gateways_own(fuzz_gateway, fuzz_standin, seed):
    """The check itself: a 503 the stand-in answered is relayed (noted, not failing); a 502
    the gateway answered on its own (the stand-in reset the connection) fails."""
    base_url, headers = fuzz_gateway
    schema, load_seconds = fuzzing.load("2.3.0")
    ops = [schema["/models"]["GET"]]
    try:
        fuzz_standin.fault(path="/v1/models", kind="status", status=503, times=-1)
        relayed = fuzzing.fuzz(fuzzing.Report("gateway", "2.3.0", seed, 2, load_seconds), ops,
                               base_url=base_url, headers=headers,
                               check=gateway_check(fuzz_standin), budget=60)
        fuzz_standin.clear_faults()
        fuzz_standin.fault(path="/v1/models", kind="reset", times=-1)
        own = fuzzing.fuzz(fuzzing.Report("gateway", "2.3.0", seed, 2, load_seconds), ops,
                           base_url=base_url, headers=headers,
                           check=gateway_check(fuzz_standin), budget=60)
    finally:
        fuzz_standin.clear_faults()
    assert relayed.cases and not relayed.findings, relayed.failure("relayed")
    assert {(n.kind, n.status) for n in relayed.notes} == {("relayed stand-in 5xx", 503)}
    assert own.cases and not own.notes
    assert {(f.kind, f.status) for f in own.findings} == {("gateway 5xx", 502)}
    assert "curl -X GET" in own.findings[0].curl and "$KEY" in own.findings[0].curl
