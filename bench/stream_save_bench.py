"""The CPU of one stream checkpoint (``recorder.checkpoint``: a running call's events and
text saved), beside the ORM's ``filter(pk=..., status="running").update(...)`` of the same
values, on the bench's SQLite database.

    python -m bench.stream_save_bench [EVENTS=60] [SAVES=300]

Each save rewrites ``EVENTS`` chat chunks (what a checkpoint does 40 s into a stream with an
event every 500 ms is about 80). The ORM line is the statement alone (the values already
redacted and assembled); the checkpoint line is all of it.
"""

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_us(func, saves):
    for _ in range(20):
        func()
    started = time.process_time()
    for _ in range(saves):
        func()
    return 1e6 * (time.process_time() - started) / saves


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    count = int(argv[0]) if argv else 60
    saves = int(argv[1]) if len(argv) > 1 else 300
    sys.path.insert(0, ROOT)
    from bench.harness import Harness

    with Harness() as harness:
        db = harness.sqlite("stream-save")
        os.environ.update(harness.django_env(db, OPENAI_DJANGO_RECORD="1"))
        import django

        django.setup()
        from openai_django import recorder
        from openai_django.models import Call

        call = Call.objects.create(
            operation="createChatCompletion", method="POST", path="/chat/completions",
            status=Call.Status.RUNNING, mode="stream", stream=True,
            request_body={"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]})
        event = json.dumps({
            "id": "chatcmpl-8PnkWfNo1P72NJTYFlf5yrNv", "object": "chat.completion.chunk",
            "created": 1796174026, "model": "gpt-4o-mini", "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "delta": {"content": "hello "}, "logprobs": None,
                         "finish_reason": None}]})
        events = [event] * count
        text = "hello " * count
        orm = _cpu_us(lambda: Call.objects.filter(pk=call.pk, status=Call.Status.RUNNING)
                      .update(stream_events=events, output_text=text), saves)
        prepared = _cpu_us(lambda: Call.objects.update_running(
            call.pk, "default", stream_events=events, output_text=text), saves)
        whole = _cpu_us(lambda: recorder.checkpoint(call, events), saves)
    print(f"{count} events, {saves} saves, load {os.getloadavg()[0]:.1f}: the ORM's UPDATE "
          f"{orm:.0f} us, update_running {prepared:.0f} us, recorder.checkpoint (redaction, "
          f"the text, update_running) {whole:.0f} us of CPU a save")
    return 0


if __name__ == "__main__":
    sys.exit(main())
