"""Migrate a benchmark database and issue the client key the load generators send.

Run as ``python -m bench.prepare_db`` with ``DATABASE_URL`` and ``BENCH_CLIENT_KEY`` set (the
harness does this); prints the key on its last line. The key is fixed per run so that every
database of one run (SQLite, PostgreSQL) accepts the same ``Authorization`` header.
"""

import os

import django


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from openai_django.models import KEY_PREFIX, APIKey, hash_key

    call_command("migrate", verbosity=0, interactive=False)
    raw = os.environ["BENCH_CLIENT_KEY"]
    user, _ = get_user_model().objects.get_or_create(username="bench")
    APIKey.objects.get_or_create(
        hashed_key=hash_key(raw),
        defaults={"user": user, "name": "bench", "prefix": raw[: len(KEY_PREFIX) + 4],
                  "last4": raw[-4:]},
    )
    print(raw)


if __name__ == "__main__":
    main()
