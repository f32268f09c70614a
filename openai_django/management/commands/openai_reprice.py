"""Recompute the stored estimated costs of recorded calls after a price change:
``manage.py openai_reprice [--since DATE] [--until DATE] [--model PATTERN] [--dry-run]``.

Run it after upgrading ``genai-prices`` or changing ``OPENAI_DJANGO["PRICES"]``; it is safe to
interrupt and to rerun (only the costs that differ are written, a batch per transaction).
"""

import datetime
import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from openai_django.repricing import BATCH, calls_to_reprice, reprice


def moment(value):
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"Not a date or a date and time: {value!r} (use 2025-06-10 or "
                               f"2025-06-10T12:00:00Z).")
        parsed = datetime.datetime.combine(day, datetime.time())
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, datetime.timezone.utc)
    return parsed


class Command(BaseCommand):
    help = ("Recompute the estimated cost of finished calls with today's prices "
            "(genai-prices and OPENAI_DJANGO['PRICES']).")

    def add_arguments(self, parser):
        parser.add_argument("--since", type=moment,
                            help="Only calls created at or after this date (UTC).")
        parser.add_argument("--until", type=moment,
                            help="Only calls created before this date (UTC).")
        parser.add_argument("--model", help="Only this model; '*' matches anything "
                                            "(--model 'gpt-4.1*').")
        parser.add_argument("--dry-run", action="store_true",
                            help="Report what would change; write nothing.")
        parser.add_argument("--batch-size", type=int, default=BATCH,
                            help=f"Calls per transaction (default {BATCH}).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args, since=None, until=None, model=None, dry_run=False,
               batch_size=BATCH, json=False, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        calls = calls_to_reprice(since=since, until=until, model=model)
        report = reprice(calls, dry_run=dry_run, batch=batch_size)
        if json:
            self.stdout.write(_dumps(report.as_dict()))
        else:
            self.stdout.write(str(report))


def _dumps(data):
    return json.dumps(data, indent=2, sort_keys=True)
