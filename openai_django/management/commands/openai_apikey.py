"""Create a client key for a user: ``manage.py openai_apikey USERNAME [--create-user]``.

The key is printed once, alone on the last line; only its hash is stored.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from openai_django.models import APIKey


class Command(BaseCommand):
    help = "Create an API key for a user of this site and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--create-user", action="store_true",
                            help="Create the user if it does not exist.")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument("--metadata-only", action="store_true",
                            help="Record only metadata (no bodies, no artifacts) for this key.")

    def handle(self, username, create_user=False, name="", metadata_only=False, **options):
        User = get_user_model()
        lookup = {User.USERNAME_FIELD: username}
        try:
            user = User._default_manager.get(**lookup)
        except User.DoesNotExist:
            if not create_user:
                raise CommandError(
                    f"No user {username!r}. Pass --create-user to create one."
                ) from None
            user = User._default_manager.create_user(**lookup)
            self.stderr.write(f"Created user {username!r} (no password: it cannot log in).")
        _, raw = APIKey.generate(user, name=name, metadata_only=metadata_only)
        self.stderr.write(f"API key for {username!r} (shown once; only a hash is stored):")
        self.stdout.write(raw)
