"""Microseconds per ``estimate_cost`` call (the price of a finished call, on the hot path).

    python -m bench.pricing_bench [--rounds N]

Unsaved calls of the common kinds (chat with cached tokens, a reasoning model, an embedding,
an image, a transcription) are priced ``rounds`` times each after one warm-up, ``repeat``
times; the figure is the CPU time per call of the best run. No database is touched.
"""

import argparse
import json
import os
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="the best of N runs is kept")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.utils import timezone

    from openai_django.models import Call
    from openai_django.pricing import estimate_cost

    now = timezone.now()
    chat = dict(operation="createChatCompletion", status="succeeded", created=now)
    calls = {
        "chat gpt-4o-mini": Call(model="gpt-4o-mini", prompt_tokens=1200, completion_tokens=300,
                                 total_tokens=1500, cached_tokens=1024, **chat),
        "chat gpt-4.1": Call(model="gpt-4.1", prompt_tokens=1200, completion_tokens=300,
                             total_tokens=1500, **chat),
        "responses o3": Call(model="o3", operation="createResponse", status="succeeded",
                             created=now, prompt_tokens=500, completion_tokens=900,
                             total_tokens=1400, reasoning_tokens=640),
        "responses gpt-5.4, 300K prompt (tiered)": Call(
            model="gpt-5.4", operation="createResponse", status="succeeded", created=now,
            prompt_tokens=300_000, completion_tokens=900, total_tokens=300_900),
        "image gpt-image-1": Call(
            model="gpt-image-1", operation="createImage", status="succeeded", created=now,
            prompt_tokens=50, completion_tokens=4160, total_tokens=4210,
            response_body={"data": [{}], "usage": {
                "input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}}),
        "embedding": Call(model="text-embedding-3-small", operation="createEmbedding",
                          status="succeeded", created=now, prompt_tokens=80, total_tokens=80),
        "image dall-e-3": Call(model="dall-e-3", operation="createImage", status="succeeded",
                               created=now, request_body={"n": 1}, response_body={"data": [{}]}),
        "transcription": Call(model="whisper-1", operation="createTranscription",
                              status="succeeded", created=now,
                              response_body={"text": "hi", "duration": 12.5}),
    }
    figures = {}
    for name, call in calls.items():
        estimate_cost(call)
        best = None
        for _ in range(args.repeat):
            started = time.process_time()  # CPU time: other processes' load does not count
            for _ in range(args.rounds):
                estimate_cost(call)
            spent = time.process_time() - started
            best = spent if best is None else min(best, spent)
        figures[name] = {"us_per_call": round(best / args.rounds * 1e6, 2),
                         "cost": str(estimate_cost(call))}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
