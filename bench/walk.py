"""The walk of one call: which of the package's modules and functions one recorded call visits.

    python -m bench.walk [--operation chat|responses] [--json FILE]

Starts the stand-in upstream, serves one warm-up call and then one measured call through
Django's test client (the whole request path: URL resolution, the operation view, the gateway,
the recorder, the upstream client), with a profiler hook that notes every Python function of
``openai_django`` entered. Prints the modules in the order they were first entered, how many
distinct functions ran and how many calls were made into the package. Fewer modules and calls
mean a shorter walk; the design asks the rebuild to shorten it, not to split it into more hops.
"""

import argparse
import json
import os
import sys
import tempfile
from collections import Counter

BODIES = {
    "chat": ("/v1/chat/completions",
             {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}),
    "responses": ("/v1/responses", {"model": "gpt-4o-mini", "input": "Say hello"}),
}


def setup(tmp):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["DJANGO_VAR_DIR"] = tmp
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def walk(path, body):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from openai_django.models import APIKey
    from openai_django.testing import StandinServer

    standin = StandinServer(api_key="sk-walk-0000", fast=True)
    standin.start()
    try:
        from django.conf import settings

        settings.OPENAI_DJANGO = {**getattr(settings, "OPENAI_DJANGO", {}),
                                  "BASE_URL": standin.url, "API_KEY": "sk-walk-0000"}
        from openai_django.conf import app_settings

        app_settings.reload()
        user = get_user_model().objects.create_user("walker")
        _, raw = APIKey.generate(user)
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

        def call():
            response = client.post(path, data=json.dumps(body), content_type="application/json")
            assert response.status_code == 200, response.content[:300]

        call()  # warm-up: imports, caches, the first connection
        entered = Counter()
        first_seen = []

        def profile(frame, event, arg):
            if event != "call":
                return
            module = frame.f_globals.get("__name__", "")
            if module.startswith("openai_django") and not module.startswith(
                    "openai_django.testing"):
                key = (module, frame.f_code.co_name)
                if module not in first_seen:
                    first_seen.append(module)
                entered[key] += 1

        sys.setprofile(profile)
        try:
            call()
        finally:
            sys.setprofile(None)
        return {"modules": first_seen, "module_count": len(first_seen),
                "functions": len(entered), "calls": sum(entered.values())}
    finally:
        standin.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", choices=sorted(BODIES), default="chat")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        setup(tmp)
        result = walk(*BODIES[args.operation])
    print(f"{args.operation}: {result['module_count']} modules, {result['functions']} "
          f"functions, {result['calls']} calls into openai_django")
    print("  " + " -> ".join(m.removeprefix("openai_django.") for m in result["modules"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
