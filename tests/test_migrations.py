"""The migrations describe the models completely (``makemigrations --check``)."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_missing_migrations():
    out = io.StringIO()
    try:
        call_command("makemigrations", "openai_django", "--check", "--dry-run", stdout=out)
    except SystemExit as exc:  # --check exits non-zero when a migration is missing
        if exc.code:
            pytest.fail(f"Missing migrations:\n{out.getvalue()}")


def test_apikey_command_prints_the_key_last(db, django_user_model):
    from openai_django.models import APIKey, hash_key

    out, err = io.StringIO(), io.StringIO()
    call_command("openai_apikey", "carol", "--create-user", "--name", "cli", stdout=out,
                 stderr=err)
    raw = out.getvalue().strip().splitlines()[-1]
    key = APIKey.objects.get(user__username="carol")
    assert key.hashed_key == hash_key(raw) and key.name == "cli"
    assert raw not in err.getvalue()
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("openai_apikey", "nobody", stdout=io.StringIO(), stderr=io.StringIO())
