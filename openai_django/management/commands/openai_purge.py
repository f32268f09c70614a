"""Apply the retention settings now: ``manage.py openai_purge [--dry-run] [--batch-size N]``.

Run it from cron if the site has no celery beat; it is safe to interrupt and to rerun.
"""

import json

from django.core.management.base import BaseCommand

from openai_django.retention import BATCH_SIZE, purge, retention_days


class Command(BaseCommand):
    help = ("Purge call bodies, artifact files and whole calls older than "
            "OPENAI_DJANGO['RETENTION'] allows.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true",
                            help="Count what would be purged; change nothing.")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                            help=f"Rows per transaction (default {BATCH_SIZE}).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args, dry_run=False, batch_size=BATCH_SIZE, json=False, **options):
        if all(days is None for days in retention_days().values()):
            self.stderr.write("OPENAI_DJANGO['RETENTION'] keeps everything forever: "
                              "nothing to purge.")
        report = purge(dry_run=dry_run, batch_size=max(1, batch_size))
        if json:
            self.stdout.write(_dumps(report.as_dict()))
        else:
            self.stdout.write(str(report))
        if report.errors:
            # A non-zero exit tells cron and CI that files are still waiting to be deleted.
            raise SystemExit(1)


def _dumps(data):
    return json.dumps(data, indent=2, sort_keys=True)
