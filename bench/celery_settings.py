"""Settings of the Celery benchmark's processes (itself and the workers it starts).

The demo site's settings, plus the ``OPENAI_DJANGO`` keys of one benchmark phase (queue,
concurrency caps) passed as JSON in ``BENCH_OPENAI_DJANGO``; the database, broker, upstream and
media root come from the usual environment variables (``DATABASE_URL``, ``CELERY_BROKER_URL``,
``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``DJANGO_MEDIA_ROOT``).
"""

import json
import os

from project.settings import *  # noqa: F403 - the demo's settings, extended below
from project.settings import OPENAI_DJANGO

OPENAI_DJANGO = {**OPENAI_DJANGO, **json.loads(os.environ.get("BENCH_OPENAI_DJANGO") or "{}")}
# No periodic tasks, no start-up noise: every message in the queue is a job being measured.
CELERY_BEAT_SCHEDULE = {}
# The no-op task that measures Celery's own floor.
CELERY_IMPORTS = ["bench.celery_noop"]
