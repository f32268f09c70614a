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
atomic, so a consumer sees the whole message or none. A publisher killed between the write
and the rename leaves its ``.partial`` file: each channel, as it opens, removes those older
than :data:`STALE_PARTIAL_SECONDS`. The rest (names, order, folders, options) is kombu's.

Use it with a filesystem broker URL::

    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT = "openai_django.filesystem_broker:Transport"

(``broker_transport`` overrides the URL's scheme: set it only when the URL is
``filesystem://``.)
"""

import os
import uuid
from time import monotonic, time

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

#: A ``.partial`` file older than this was left by a publisher that died between its write and
#: its rename (a live one takes milliseconds): its message was never sent, the file is removed.
STALE_PARTIAL_SECONDS = 600


class Channel(filesystem.Channel):
    """kombu's filesystem channel whose messages are renamed into place once written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._remove_stale_partials()

    def _remove_stale_partials(self):
        """Remove the ``.partial`` files of publishers that died mid-write (each channel, as a
        worker or a web process opens it: never in a poll)."""
        folder = self.data_folder_out
        cutoff = time() - STALE_PARTIAL_SECONDS
        try:
            names = os.listdir(folder)
        except OSError:
            return  # kombu reports a missing folder where it uses it
        for name in names:
            if name.startswith(".") and name.endswith(".partial"):
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.remove(path)
                except OSError:
                    pass  # renamed or removed meanwhile

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
