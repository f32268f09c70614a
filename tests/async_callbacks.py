"""A callback task for the background-call tests: a site's "your call is done" hook.

It appends ``<call id> <status>`` to the file named by the worker's settings, which the test
reads back: the callback ran in the worker, got the id, and saw the finished row.
"""

from celery import shared_task
from django.conf import settings


@shared_task(name="tests.async_callbacks.call_done", ignore_result=True)
def call_done(call_id):
    from openai_django.models import Call

    call = Call.objects.get(pk=call_id)
    with open(settings.OPENAI_DJANGO_TEST_CALLBACK_FILE, "a") as handle:
        handle.write(f"{call_id} {call.status}\n")
