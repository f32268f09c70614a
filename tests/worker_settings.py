"""Settings of the Celery workers the tests start (``tests/fixtures/celery_worker.py``).

The demo site's settings, with what the test set up passed in one JSON environment variable,
``OPENAI_DJANGO_TEST_WORKER``: the test database (already created and migrated by the test
run), the broker, the media root and the test's ``OPENAI_DJANGO`` (upstream URL, queue, retry
and concurrency settings), so a worker process sees exactly what the test sees.
"""

import json
import os

from project.settings import *  # noqa: F403 - the demo's settings, overridden below
from project.settings import LOGGING, OPENAI_DJANGO

_config = json.loads(os.environ["OPENAI_DJANGO_TEST_WORKER"])

DATABASES = {"default": _config["database"]}
MEDIA_ROOT = _config["media_root"]
OPENAI_DJANGO = {**OPENAI_DJANGO, **_config["openai_django"]}
CELERY_BROKER_URL = _config["broker_url"]
CELERY_BROKER_TRANSPORT_OPTIONS = _config.get("transport_options") or {}
CELERY_BROKER_TRANSPORT = _config.get("transport")
# The callback tasks of the tests, sent to the test run's own queue (like everything else).
CELERY_IMPORTS = ["tests.async_callbacks"]
CELERY_TASK_ROUTES = {"tests.async_callbacks.*": {"queue": _config["queue"]}}
OPENAI_DJANGO_TEST_CALLBACK_FILE = _config.get("callback_file")

LOGGING = {**LOGGING, "loggers": {
    "openai_django": {"handlers": ["console"], "level": "DEBUG"},
}}
