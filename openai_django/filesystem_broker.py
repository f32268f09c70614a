"""kombu's filesystem transport, with messages that appear whole.

kombu's ``filesystem://`` transport (the demo's broker: a folder, no service) writes a message
by creating ``<ms>_<uuid>.<queue>.msg`` and then writing into it; its ``flock`` does not stop a
consumer, which moves the file away (a rename) without taking the lock. A worker polling the
folder in between takes an empty or half-written message: kombu raises ``JSONDecodeError``
("Expecting value: line 1 column 1", kombu issue #1551, open) and the message is gone, so
the call it named stays ``queued`` until the sweep re-queues it (``STALE_QUEUED_AFTER``).

``python -m bench.broker_race`` (one publisher and one consumer process on one folder,
3,000 messages of 2 KB, beside six busy processes on the 2 cores, so the publisher is
descheduled inside that window now and then) lost 0, 7 and 179 messages with kombu's
transport in three rounds (87, 1, 337, 179, 311 and 64 in earlier ones), 0 in every round
with this one. The likely cause of a CI failure: a background call that never finished.

Here a message is serialized first, written under a name no consumer reads
(``.<uuid>.partial``: not ``*.<queue>.msg``, so kombu's ``_get``, ``_size`` and ``_purge`` pass
it by) and renamed to its final name once written: ``os.replace`` in one folder is
atomic, so a consumer sees the whole message or none. The rest (names, order, folders,
options) is kombu's.

Use it with a filesystem broker URL::

    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT = "openai_django.filesystem_broker:Transport"

(``broker_transport`` overrides the URL's scheme: set it only when the URL is
``filesystem://``.)
"""

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """kombu's filesystem channel whose messages are renamed into place once written."""

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``: written aside, then renamed to kombu's name."""
        data = str_to_bytes(dumps(payload))  # before any file: a payload that fails leaves none
        folder = self.data_folder_out
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(folder, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb", buffering=0) as handle:
                handle.write(data)
            os.replace(partial, os.path.join(folder, name))
        except OSError as exc:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel


__all__ = ["Channel", "Transport"]
