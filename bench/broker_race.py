"""Messages lost between a publisher and a consumer of one filesystem broker folder.

    python -m bench.broker_race [MESSAGES] [BUSY] [ROUNDS]

One process publishes ``MESSAGES`` (3,000) messages of 2 KB into a fresh folder while another
takes them as fast as it can (kombu's ``_get``, the worker's poll), beside ``BUSY`` (6)
processes spinning on the two cores so the publisher is descheduled now and then; for
``ROUNDS`` (3) rounds, kombu's own ``filesystem`` transport and
:mod:`openai_django.filesystem_broker` in turn. Prints, per round and transport, the messages
taken whole and those lost (a consumer read that raised: an empty or half-written file).
"""

import multiprocessing
import shutil
import sys
import tempfile
import time
from queue import Empty

TRANSPORTS = ("filesystem", "openai_django.filesystem_broker:Transport")


def _spin(stop):
    while not stop.is_set():
        pass


def _consume(transport, folder, count, out):
    from kombu import Connection

    channel = Connection("filesystem://", transport=transport, transport_options={
        "data_folder_in": folder, "data_folder_out": folder}).channel()
    whole = lost = 0
    deadline = time.monotonic() + 60
    while whole + lost < count and time.monotonic() < deadline:
        try:
            channel._get("q")
        except Empty:
            continue
        except Exception:  # what an empty or half-written file raises (JSONDecodeError)
            lost += 1
            continue
        whole += 1
    out.put((whole, lost))


def run(transport, count):
    from kombu import Connection

    folder = tempfile.mkdtemp(prefix="broker-race-")
    try:
        out = multiprocessing.Queue()
        consumer = multiprocessing.Process(target=_consume, args=(transport, folder, count, out))
        consumer.start()
        channel = Connection("filesystem://", transport=transport, transport_options={
            "data_folder_in": folder, "data_folder_out": folder}).channel()
        payload = {"body": "x" * 2000, "properties": {}}
        for _ in range(count):
            channel._put("q", payload)
        result = out.get(timeout=90)
        consumer.join(10)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv):
    count = int(argv[0]) if argv else 3000
    busy = int(argv[1]) if len(argv) > 1 else 6
    rounds = int(argv[2]) if len(argv) > 2 else 3
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    try:
        for round_ in range(1, rounds + 1):
            for transport in TRANSPORTS:
                whole, lost = run(transport, count)
                print(f"round {round_}  {transport:45}  whole {whole:5}  lost {lost:4}",
                      flush=True)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join(5)


if __name__ == "__main__":
    main(sys.argv[1:])
