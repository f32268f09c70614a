"""A fresh Django site gets the whole gateway by following the README's installation section:
the package installed as a wheel, a custom user model, a custom admin site, the URLs under a
prefix of its own."""

import json
import re
import sqlite3
import subprocess
import sys

import pytest
import requests

from .fixtures.existing_site import install_steps

# A site of its own (its own SQLite and media): the run's database and storage are not used.
pytestmark = [pytest.mark.slow, pytest.mark.once]


def test_install_doc_has_the_steps_the_test_runs():
    actions = [step.action for step in install_steps()]
    assert actions.count("serve") == 1 and actions.count("client") == 1
    assert actions.index("serve") < actions.index("client") == len(actions) - 1


def test_a_fresh_site_gets_the_gateway_by_following_the_install_doc(existing_site, upstream):
    site = existing_site
    steps = install_steps()
    for step in steps:
        if step.action in ("serve", "client"):
            break
        site.apply(step)

    # What got imported is the wheel, not this checkout.
    where = site.run([sys.executable, "-c",
                      "import openai_django; print(openai_django.__file__)"]).stdout.strip()
    assert where.startswith(str(site.packages)), where
    assert (site.packages / "openai_django" / "spec" / "openapi.yaml").exists()
    assert list((site.packages / "openai_django" / "migrations").glob("0001_*.py"))

    # `manage.py check` ran clean of the app's own warnings (key, retention, HTTPS in DEBUG).
    check = next(r for argv, r in site.outputs if argv[-1] == "check")
    assert "openai_django." not in check.stdout + check.stderr

    # The key is the last line of openai_apikey's output.
    key_run = next(r for argv, r in site.outputs if "openai_apikey" in argv)
    key = key_run.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-od-") and " " not in key

    base = site.serve(next(s for s in steps if s.action == "serve")) + "/ai/v1"

    # The doc's own client snippet, as a user would run it.
    client_step = next(s for s in steps if s.action == "client")
    script = f"KEY = {key!r}\n" + client_step.body.replace("127.0.0.1:8000",
                                                          f"127.0.0.1:{site.port}")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**site.env, "PYTHONPATH": ""}, check=False)
    assert result.returncode == 0, result.stderr
    assert "Hello!" in result.stdout  # the stand-in quotes the prompt

    # More calls, over the SDK and raw HTTP: a stream, an image (an artifact), an upload.
    import openai

    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "count"}]))
    assert len(chunks) > 2
    image = client.images.generate(prompt="a fox", response_format="b64_json")
    assert image.data[0].b64_json
    uploaded = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    assert uploaded.id
    client.close()
    assert requests.get(f"{base}/models").status_code == 401  # no key, no gateway

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    log = session.get(f"{base}/calls", params={"limit": 10}).json()
    operations = [c["operation"] for c in log["data"]]
    assert operations == ["createFile", "createImage", "createChatCompletion",
                          "createChatCompletion"], operations
    assert all(c["status"] == "succeeded" for c in log["data"])
    image_call = session.get(f"{base}/calls/{log['data'][1]['id']}").json()
    artifact = image_call["artifacts"][0]
    assert artifact["url"].startswith(f"http://127.0.0.1:{site.port}/ai/v1/calls/")
    served = session.get(artifact["url"])
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    assert list((site.root / "media").rglob("*-image-0.png"))
    # The upstream saw the upstream key, never the site's client key.
    seen = upstream.requests()
    assert seen and all(key not in json.dumps(r) for r in seen)

    # The records belong to the site's own user model.
    with sqlite3.connect(site.root / "db.sqlite3") as db:
        owners = db.execute(
            "select distinct u.email from openai_django_call c "
            "join accounts_user u on u.id = c.user_id").fetchall()
    assert owners == [("alice@example.com",)]

    # The app's admin under the site's own admin site, logged in as its staff user.
    staff = requests.Session()
    login_url = f"http://127.0.0.1:{site.port}/staff/login/"
    page = staff.get(login_url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = staff.post(login_url, data={
        "csrfmiddlewaretoken": token, "username": "admin@example.com",
        "password": "staff-pw-0451", "next": "/staff/"}, headers={"Referer": login_url})
    assert response.status_code == 200 and "My site: staff" in response.text
    index = staff.get(f"http://127.0.0.1:{site.port}/staff/openai_django/")
    assert index.status_code == 200
    changelist = staff.get(f"http://127.0.0.1:{site.port}/staff/openai_django/call/")
    assert changelist.status_code == 200, changelist.text[:2000]
    for call in log["data"]:
        assert call["id"] in changelist.text
    detail = staff.get(
        f"http://127.0.0.1:{site.port}/staff/openai_django/call/{image_call['id']}/change/")
    assert detail.status_code == 200, detail.text[:2000]
    assert "a fox" in detail.text
    keys = staff.get(f"http://127.0.0.1:{site.port}/staff/openai_django/apikey/")
    assert keys.status_code == 200 and key not in keys.text  # never the whole secret

    # The retention command works in the new site too.
    dry = site.manage("openai_purge", "--dry-run")
    assert "would purge: bodies of 0 calls" in dry.stdout
