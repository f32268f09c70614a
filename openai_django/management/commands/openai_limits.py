"""Budgets and rate limits from the command line (what the admin and
``openai_django.set_budget`` / ``set_rate_limit`` do)::

    manage.py openai_limits show
    manage.py openai_limits set --user alice --daily-usd 5 --rpm 60
    manage.py openai_limits set --group team --monthly-usd 200 --tpm 100000
    manage.py openai_limits set --key sk-od-AbCd --monthly-tokens none   # "none" removes one
    manage.py openai_limits clear --user alice

A key is named by its prefix (``sk-od-`` and the next four characters, as the admin shows it)
or its id; a user by username; a group by name.
"""

from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from openai_django import budgets, controls
from openai_django.models import Allowance, APIKey

FIELDS = {
    "daily_usd": "--daily-usd", "monthly_usd": "--monthly-usd", "total_usd": "--total-usd",
    "daily_tokens": "--daily-tokens", "monthly_tokens": "--monthly-tokens",
    "total_tokens": "--total-tokens", "requests_per_minute": "--rpm",
    "tokens_per_minute": "--tpm",
}


def _value(name, text):
    if text.lower() in ("none", "off", ""):
        return None
    try:
        value = Decimal(text) if name.endswith("_usd") else int(text)
    except (InvalidOperation, ValueError):
        raise CommandError(f"{FIELDS[name]} must be a number or 'none', not {text!r}.") from None
    if value < 0:
        raise CommandError(f"{FIELDS[name]} must not be negative.")
    return value


class Command(BaseCommand):
    help = "Show, set or clear the budgets and rate limits of API keys, users and groups."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        show = sub.add_parser("show", help="Every allowance with this period's spend.")
        clear = sub.add_parser("clear", help="Remove a subject's budgets and limits.")
        change = sub.add_parser("set", help="Set budgets/limits ('none' removes one).")
        for p in (show, clear, change):
            group = p.add_mutually_exclusive_group(required=p is not show)
            group.add_argument("--key", help="An API key's prefix (sk-od-XXXX) or id.")
            group.add_argument("--user", help="A username.")
            group.add_argument("--group", help="A group's name.")
        for name, flag in FIELDS.items():
            change.add_argument(flag, dest=name, metavar="N")

    def subject(self, key=None, user=None, group=None):
        try:
            if key:
                keys = APIKey.objects.filter(prefix=key) if not key.isdigit() else \
                    APIKey.objects.filter(pk=int(key))
                found = list(keys[:2])
                if len(found) != 1:
                    raise CommandError(f"{'No' if not found else 'More than one'} API key "
                                       f"{key!r}: name it by id.")
                return found[0]
            if user:
                User = get_user_model()
                return User._default_manager.get(**{User.USERNAME_FIELD: user})
            if group:
                return Group.objects.get(name=group)
        except (get_user_model().DoesNotExist, Group.DoesNotExist):
            raise CommandError(f"No such user or group: {user or group!r}.") from None
        return None

    def handle(self, action, key=None, user=None, group=None, **options):
        subject = self.subject(key, user, group)
        if action == "set":
            values = {name: _value(name, options[name]) for name in FIELDS
                      if options.get(name) is not None}
            if not values:
                raise CommandError("Nothing to set: give at least one of "
                                   + ", ".join(FIELDS.values()) + ".")
            try:
                allowance = controls._update(subject, values)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.show([allowance])
        elif action == "clear":
            removed = controls.clear_allowance(subject)
            self.stdout.write("Removed." if removed else "Nothing to remove.")
        else:
            allowances = Allowance.objects.select_related("api_key", "user", "group")
            if subject is not None:
                allowances = allowances.filter(**controls._subject(subject))
            self.show(allowances)

    def show(self, allowances):
        for allowance in allowances:
            self.stdout.write(controls._label(allowance) + ":")
            rates = [f"{allowance.requests_per_minute} requests/min"
                     if allowance.requests_per_minute is not None else "",
                     f"{allowance.tokens_per_minute} tokens/min"
                     if allowance.tokens_per_minute is not None else ""]
            if any(rates):
                self.stdout.write("  rate limit: " + ", ".join(r for r in rates if r))
            for row in budgets.state(allowance):
                parts = []
                if row["limit_usd"] is not None:
                    parts.append(f"${row['spent_usd']:.6f} of ${row['limit_usd']:.6f}")
                if row["limit_tokens"] is not None:
                    parts.append(f"{row['spent_tokens']} of {row['limit_tokens']} tokens")
                reserved = ""
                if row["reserved_usd"] or row["reserved_tokens"]:
                    reserved = (f" (+ ${row['reserved_usd']:.6f} / {row['reserved_tokens']} "
                                f"tokens reserved by calls in flight)")
                self.stdout.write(f"  {row['period']} budget since {row['start']}: "
                                  + ", ".join(parts) + f", {row['calls']} calls" + reserved)
