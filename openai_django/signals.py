"""Signals sent when a call ends, so a host site can react without subclassing.

``call_finished(sender=Call, call=<Call>)``: the call succeeded (status ``succeeded``).
``call_failed(sender=Call, call=<Call>)``: the call ended any other way (``failed`` or
``cancelled``); ``call.outcome`` says how and ``call.error`` holds the error body.

Both are sent after the record is saved, in the process that performed the call (the web
process for sync and stream calls, the Celery worker for background calls).

``before_call(sender=CallRequest, request=<openai_django.policy.CallRequest>)``: a call is about
to be made (nothing recorded or sent yet); a receiver refuses it by returning a reason or
raising ``openai_django.policy.Refused`` (see openai_django/policy.py).
"""

from django.dispatch import Signal

call_finished = Signal()
call_failed = Signal()
before_call = Signal()
