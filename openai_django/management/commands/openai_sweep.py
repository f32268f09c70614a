"""Finish calls orphaned by a dead process: ``manage.py openai_sweep [--json]``.

Web processes sweep by themselves every ``SWEEP_INTERVAL`` seconds and celery beat can run
``openai_django.sweep_stale_calls``; a site with neither (``SWEEP_INTERVAL = None`` and no beat)
runs this from cron, e.g. every five minutes. Safe to run anywhere, at any time, concurrently.
"""

import json

from django.core.management.base import BaseCommand

from openai_django.tasks import sweep


class Command(BaseCommand):
    help = ("Finish calls left running by a dead process (as lost, or queued again when a "
            "background call may be repeated).")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the counts as JSON.")

    def handle(self, *args, json=False, **options):
        counts = sweep()
        if json:
            self.stdout.write(_dumps(counts))
        else:
            self.stdout.write(", ".join(f"{name}: {n}" for name, n in counts.items()))


def _dumps(data):
    return json.dumps(data, sort_keys=True)
