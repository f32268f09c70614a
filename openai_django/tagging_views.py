"""The REST log's parts for tags, sessions and feedback (see :mod:`openai_django.tagging`).

``GET /v1/calls?tag=checkout&session=s-1`` filters the log (``tag`` may be repeated, or
comma-separated: calls with every tag); ``/v1/calls/<id>/feedback`` takes the call's own
user's verdict: ``POST {"score": -1..1, "comment": "..."}`` records it (a second POST
replaces it), ``GET`` reads it, ``DELETE`` withdraws it.
"""

from openai_django import tagging
from openai_django.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType

FEEDBACK_BODY_MAX = 64 * 1024  # a 4,000-character comment, escaped, fits many times over


def filter_log(calls, params):
    """``calls`` narrowed by the ``tag`` and ``session`` query parameters."""
    values = params.getlist("tag") if hasattr(params, "getlist") else [params.get("tag")]
    values = [v for v in values if v]
    if values:
        tags = tagging.parse_tags(",".join(values), param="tag")
        # Newest first as before (the call's id), read from the tag's index.
        calls = tagging.with_tags(calls, tags).order_by(tagging.TAG_ORDER)
    session = params.get("session")
    if session:
        calls = calls.filter(session=tagging.parse_session(session, param="session"))
    return calls


class FeedbackMixin:
    """The feedback endpoint; ``get_call(request, call_id)`` finds the user's own call (404
    for anyone else's, like every ``/v1/calls`` view)."""

    def _respond(self, call, feedback, status=200):
        from openai_django.views import json_response

        return json_response(tagging.feedback_to_dict(feedback), status=status,
                             headers={"X-Call-Id": str(call.pk)})

    def get(self, request, call_id):
        call = self.get_call(request, call_id)
        feedback = tagging.feedback_of(call)
        if feedback is None:
            raise NotFound(f"Call {call.pk} has no feedback.", call=call)
        return self._respond(call, feedback)

    def post(self, request, call_id):
        from openai_django.invocation import parse_json

        call = self.get_call(request, call_id)
        django_request = request._request
        content_type = django_request.META.get("CONTENT_TYPE", "").split(";")[0].strip()
        if content_type and not (content_type == "application/json"
                                 or content_type.endswith("+json")):
            raise UnsupportedMediaType(f"Feedback is a JSON body, not {content_type}.",
                                       call=call)
        raw = django_request.body
        if len(raw) > FEEDBACK_BODY_MAX:
            raise PayloadTooLarge(f"The feedback body is {len(raw)} bytes; at most "
                                  f"{FEEDBACK_BODY_MAX}.", call=call)
        if not raw.strip():
            raise InvalidRequest("The body is empty: send {\"score\": ..., \"comment\": ...}.",
                                 call=call)
        try:
            score, comment = tagging.parse_feedback(parse_json(raw))
        except InvalidRequest as exc:
            exc.call = call
            raise
        existed = tagging.feedback_of(call) is not None
        feedback = tagging.give_feedback(call, score, comment)
        return self._respond(call, feedback, status=200 if existed else 201)

    def delete(self, request, call_id):
        from openai_django.models import CallFeedback
        from openai_django.views import json_response

        call = self.get_call(request, call_id)
        deleted, _rows = CallFeedback.objects.filter(call=call).delete()
        if not deleted:
            raise NotFound(f"Call {call.pk} has no feedback.", call=call)
        return json_response({"object": "call.feedback.deleted", "call_id": str(call.pk),
                              "deleted": True}, headers={"X-Call-Id": str(call.pk)})
