"""The site's own logins at the gateway (``AUTHENTICATION_CLASSES``): a user logged in to the
site calls /v1/ from the site's own page in a real Chromium (the demo's ``/playground/``), CSRF
enforced as DRF's ``SessionAuthentication`` enforces it, the call recorded under that user with
no key; without the setting, a session is not enough (401). Over HTTP on the live server and
under a real ASGI server (uvicorn) too."""

import json
import re
import urllib.parse

import pytest
import requests
from rest_framework.authentication import BaseAuthentication, SessionAuthentication

from openai_django import access, auth
from openai_django.models import APIKey, Call

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_cache")]

SESSIONS = ["openai_django.auth.APIKeyAuthentication",
            "rest_framework.authentication.SessionAuthentication"]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to Ada"}]}


def accept_sessions(settings, classes=SESSIONS):
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO, "AUTHENTICATION_CLASSES": classes}


def site_login(base_url, username, password):
    """A requests session logged in through the site's login page (its CSRF form)."""
    session = requests.Session()
    session.trust_env = False
    page = session.get(f"{base_url}/accounts/login/?next=/playground/", timeout=20)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = session.post(f"{base_url}/accounts/login/", timeout=20, data={
        "csrfmiddlewaretoken": token, "username": username, "password": password,
        "next": "/playground/"}, headers={"Referer": f"{base_url}/accounts/login/"})
    assert done.url.endswith("/playground/"), done.url
    session.csrf = session.cookies["csrftoken"]
    return session


# -- in a real browser -----------------------------------------------------------------------


def ask(page, model="gpt-4o-mini", text="hi", with_token=True):
    return page.evaluate("([m, t, w]) => window.ask(m, t, {withToken: w})",
                         [model, text, with_token])


@pytest.mark.browser
@pytest.mark.slow
def test_the_sites_own_page_calls_with_its_login(page, live_server, upstream, media_root,
                                                 settings, user, screenshots_dir):
    accept_sessions(settings)
    page.goto(f"{live_server.url}/playground/")
    page.wait_for_url(re.compile(r".*/accounts/login/\?next=/playground/$"))
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw-alice-123")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r".*/playground/$"))
    assert page.locator("#who").inner_text() == "alice"
    assert page.locator("#sessions-off").count() == 0

    page.fill("#prompt", "Say hello to the visitor, Ada")
    page.click("#send")
    page.wait_for_selector("#answer[data-status]")
    assert page.locator("#answer").get_attribute("data-status") == "200"
    assert page.locator("#answer").inner_text().strip()
    call_id = page.locator("#call-id").inner_text()
    page.screenshot(path=str(screenshots_dir / "site-login-playground.png"), full_page=True)

    call = Call.objects.get(pk=call_id)
    assert call.user == user and call.api_key is None
    assert call.outcome == Call.Outcome.OK and call.source == Call.Source.HTTP
    assert call.request_body["messages"][0]["content"] == "Say hello to the visitor, Ada"
    # Neither the session cookie nor the CSRF token is recorded or sent upstream.
    assert not {"cookie", "x-csrftoken"} & set(call.request_headers)
    [sent] = upstream.requests()
    assert "cookie" not in sent["headers"] and "x-csrftoken" not in sent["headers"]
    assert sent["headers"]["authorization"].endswith("0000")  # the site's upstream key

    # The page reads the user's calls from the REST log with the same login.
    listed = page.evaluate("() => fetch('/v1/calls').then(r => r.json())")
    assert [c["id"] for c in listed["data"]] == [call_id]

    # Without the CSRF token, or with a wrong one: refused, nothing recorded or sent.
    for result in (ask(page, with_token=False),
                   page.evaluate("""() => fetch('/v1/chat/completions', {method: 'POST',
                       headers: {'Content-Type': 'application/json', 'X-CSRFToken': 'x'.repeat(32)},
                       body: JSON.stringify({model: 'gpt-4o-mini', messages: [
                           {role: 'user', content: 'hi'}]})}).then(async r => (
                       {status: r.status, callId: r.headers.get('X-Call-Id'),
                        body: await r.json()}))""")):
        assert result["status"] == 403, result
        assert result["body"]["error"]["message"].startswith("CSRF Failed")
        assert result["body"]["error"]["type"] == "invalid_request_error"
        assert result["body"]["error"]["code"] == "csrf_failed"
        assert result["callId"] is None
    assert Call.objects.count() == 1 and len(upstream.requests()) == 1

    # Without the setting, the same login is not enough: 401, nothing recorded.
    settings.OPENAI_DJANGO = {k: v for k, v in settings.OPENAI_DJANGO.items()
                              if k != "AUTHENTICATION_CLASSES"}
    page.reload()
    assert page.locator("#sessions-off").is_visible()
    result = ask(page)
    assert result["status"] == 401, result
    assert result["body"]["error"]["message"].startswith("You didn't provide an API key")
    assert Call.objects.count() == 1 and len(upstream.requests()) == 1


# -- over HTTP -------------------------------------------------------------------------------


def test_a_session_without_the_setting_gets_401(live_server, upstream, media_root, user):
    session = site_login(live_server.url, "alice", "pw-alice-123")
    response = session.post(f"{live_server.url}/v1/chat/completions", json=CHAT,
                            headers={"X-CSRFToken": session.csrf})
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("You didn't provide an API key")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert session.get(f"{live_server.url}/v1/calls").status_code == 401
    assert not Call.objects.exists() and upstream.requests() == []


def test_sessions_and_keys_side_by_side(live_server, upstream, media_root, settings, user,
                                        api_key):
    accept_sessions(settings)
    base = f"{live_server.url}/v1"
    session = site_login(live_server.url, "alice", "pw-alice-123")
    by_session = session.post(f"{base}/chat/completions", json=CHAT,
                              headers={"X-CSRFToken": session.csrf})
    assert by_session.status_code == 200, by_session.text
    by_key = requests.post(f"{base}/chat/completions", json=CHAT,
                           headers={"Authorization": f"Bearer {api_key}"})
    assert by_key.status_code == 200
    session_call = Call.objects.get(pk=by_session.headers["X-Call-Id"])
    key_call = Call.objects.get(pk=by_key.headers["X-Call-Id"])
    assert session_call.user == user and session_call.api_key is None
    assert key_call.user == user and key_call.api_key == APIKey.objects.get(user=user)

    # A key that is wrong is refused even with a good session: explicit credentials decide.
    bad = session.post(f"{base}/chat/completions", json=CHAT,
                       headers={"X-CSRFToken": session.csrf,
                                "Authorization": "Bearer sk-not-a-key-000000"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    # Another scheme is left to the next class; none takes it: 401.
    basic = requests.post(f"{base}/chat/completions", json=CHAT,
                          headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert basic.status_code == 401 and basic.json()["error"]["code"] == "invalid_api_key"
    # A multipart upload: the token comes from the header, the file reaches the upstream
    # byte for byte (the CSRF check parsed nothing).
    audio = b"ID3" + bytes(range(256)) * 8
    upload = {"files": {"file": ("hello.mp3", audio, "audio/mpeg")},
              "data": {"model": "whisper-1"}}
    assert session.post(f"{base}/audio/transcriptions", **upload).status_code == 403
    transcribed = session.post(f"{base}/audio/transcriptions", **upload,
                               headers={"X-CSRFToken": session.csrf})
    assert transcribed.status_code == 200, transcribed.text
    import hashlib

    [sent] = upstream.requests()[-1]["files"]
    assert sent["bytes"] == len(audio) and sent["sha256"] == hashlib.sha256(audio).hexdigest()
    # GET needs no CSRF token; the session's user sees their own calls.
    detail = session.get(f"{base}/calls/{session_call.pk}")
    assert detail.status_code == 200 and detail.json()["id"] == str(session_call.pk)

    # A user deactivated mid-session is out at once.
    user.is_active = False
    user.save()
    gone = session.post(f"{base}/chat/completions", json=CHAT,
                        headers={"X-CSRFToken": session.csrf})
    assert gone.status_code == 401
    assert Call.objects.count() == 3 and len(upstream.requests()) == 3


def test_a_session_call_is_throttled_and_checked_like_a_key(live_server, upstream, media_root,
                                                          settings, user, monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    accept_sessions(settings)
    settings.OPENAI_DJANGO = {**settings.OPENAI_DJANGO,
                              "THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
                              "BEFORE_CALL": "tests.site_policy.refuse_gpt41"}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "2/min"})
    session = site_login(live_server.url, "alice", "pw-alice-123")
    url = f"{live_server.url}/v1/chat/completions"
    headers = {"X-CSRFToken": session.csrf}
    refused = session.post(url, json={**CHAT, "model": "gpt-4.1"}, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "refused_by_policy"
    assert session.post(url, json=CHAT, headers=headers).status_code == 200
    throttled = session.post(url, json=CHAT, headers=headers)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    rejected = Call.objects.filter(outcome=Call.Outcome.REJECTED).order_by("created")
    assert [(c.response_status, c.user, c.api_key) for c in rejected] == [
        (403, user, None), (429, user, None)]
    assert len(upstream.requests()) == 1


def test_an_admin_page_of_a_session_call(live_server, upstream, media_root, settings, user,
                                         admin_client):
    accept_sessions(settings)
    session = site_login(live_server.url, "alice", "pw-alice-123")
    response = session.post(f"{live_server.url}/v1/chat/completions", json=CHAT,
                            headers={"X-CSRFToken": session.csrf})
    call_id = response.headers["X-Call-Id"]
    listing = admin_client.get("/admin/openai_django/call/")
    assert listing.status_code == 200 and call_id in listing.content.decode()
    page = admin_client.get(f"/admin/openai_django/call/{call_id}/change/")
    assert page.status_code == 200 and "alice" in page.content.decode()
    exported = admin_client.post("/admin/openai_django/call/", {
        "action": "export_jsonl", "_selected_action": [call_id]})
    assert exported.status_code == 200
    content = b"".join(exported.streaming_content) if exported.streaming else exported.content
    record = json.loads(content.splitlines()[0])
    assert record["id"] == call_id and record["api_key"] is None
    usage = admin_client.get("/admin/openai_django/call/usage/")
    assert usage.status_code == 200 and "alice" in usage.content.decode()


# -- the settings ----------------------------------------------------------------------------


class HeaderToken(BaseAuthentication):
    needs_site_middleware = False

    def authenticate(self, request):
        return None


class FakeJWT(BaseAuthentication):
    """A Bearer-token class of the site's own (as a JWT class is): ``Bearer jwt-<username>``."""

    needs_site_middleware = False

    def authenticate(self, request):
        from django.contrib.auth import get_user_model
        from rest_framework.exceptions import AuthenticationFailed

        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not token.startswith("jwt-"):
            return None
        user = get_user_model().objects.filter(username=token[4:]).first()
        if user is None:
            raise AuthenticationFailed("Invalid token.")
        return user, token


def test_another_bearer_token_class_beside_keys(live_server, upstream, media_root, settings,
                                                user, api_key):
    accept_sessions(settings, ["openai_django.auth.APIKeyAuthentication",
                               f"{__name__}.FakeJWT"])
    url = f"{live_server.url}/v1/chat/completions"

    def post(token):
        return requests.post(url, json=CHAT, headers={"Authorization": f"Bearer {token}"})

    by_token, by_key = post("jwt-alice"), post(api_key)
    assert by_token.status_code == 200 and by_key.status_code == 200
    token_call = Call.objects.get(pk=by_token.headers["X-Call-Id"])
    assert token_call.user == user and token_call.api_key is None
    assert Call.objects.get(pk=by_key.headers["X-Call-Id"]).api_key is not None
    refused = post("jwt-nobody")
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "Invalid token."
    for wrong in ("sk-od-not-a-key-0000", "neither-a-key-nor-a-token"):
        response = post(wrong)
        assert response.status_code == 401
        assert response.json()["error"]["message"].startswith("Incorrect API key provided")
    assert Call.objects.count() == 2 and len(upstream.requests()) == 2


def test_needs_site_middleware(settings):
    settings.OPENAI_DJANGO = {}
    assert auth.needs_site_middleware() is False
    assert access.authentication_classes() is None
    accept_sessions(settings, ["openai_django.auth.APIKeyAuthentication"])
    assert auth.needs_site_middleware() is False
    assert access.authentication_classes() is None  # keys only: the fast path
    accept_sessions(settings)
    assert auth.needs_site_middleware() is True
    accept_sessions(settings, [SessionAuthentication])
    assert auth.needs_site_middleware() is True
    accept_sessions(settings, ["openai_django.auth.APIKeyAuthentication",
                               f"{__name__}.HeaderToken"])
    assert auth.needs_site_middleware() is False


def test_bad_classes_are_system_check_errors(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    for value in (["rest_framework.authentication.NoSuchAuthentication"], []):
        settings.OPENAI_DJANGO = {"AUTHENTICATION_CLASSES": value}
        with pytest.raises(SystemCheckError, match="openai_django.E031"):
            call_command("check")
    settings.OPENAI_DJANGO = {"THROTTLE_CLASSES": ["no.such.Throttle"]}
    with pytest.raises(SystemCheckError, match="openai_django.E031"):
        call_command("check")


# -- under a real ASGI server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sessions_asgi_site(asgi_upstream):
    from tests.fixtures.asgi import AsgiSite

    site = AsgiSite(asgi_upstream.url, overrides={"AUTHENTICATION_CLASSES": SESSIONS})
    made = site.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                       "get_user_model().objects.create_user('dora', password='pw-dora-123')")
    assert made.returncode == 0, made.stderr
    server = site.start_server("uvicorn")
    yield site, server
    site.close()


@pytest.mark.slow
def test_a_session_under_asgi(sessions_asgi_site, asgi_upstream):
    site, server = sessions_asgi_site
    asgi_upstream.clear_requests()
    session = site_login(server.url, "dora", "pw-dora-123")
    url = f"{server.url}/v1/chat/completions"
    refused = session.post(url, json=CHAT)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["message"].startswith("CSRF Failed")
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert asgi_upstream.requests() == []
    response = session.post(url, json=CHAT, headers={"X-CSRFToken": session.csrf})
    assert response.status_code == 200, response.text
    call_id = response.headers["X-Call-Id"]
    record = session.get(f"{server.url}/v1/calls/{urllib.parse.quote(call_id)}").json()
    assert record["id"] == call_id and record["status"] == "succeeded"
    # Dora's call is hers: the site's key user does not see it.
    assert site.call(call_id) is None
    assert len(asgi_upstream.requests()) == 1
    # Keys still work beside sessions.
    by_key = requests.post(url, json=CHAT, headers=site.headers)
    assert by_key.status_code == 200
