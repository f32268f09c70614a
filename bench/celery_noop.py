"""A task that does nothing but count itself: the floor of Celery's own cost per job with the
options ``openai_django.perform_call`` uses (``acks_late``, ``reject_on_worker_lost``,
prefetch 1), measured by ``bench.celery_bench`` next to the real jobs."""

import os
import time

from celery import shared_task

_client = None


def _redis():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    return _client


@shared_task(name="bench.celery_noop.noop", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def noop(key):
    client = _redis()
    now = time.time()
    client.set(f"{key}:first", now, nx=True)
    client.set(f"{key}:last", now)
    client.incr(key)
