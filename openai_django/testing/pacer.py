"""One timer for every paced stream of the stand-in.

A stand-in holding 10,000 streams that each send an event every 500 ms would otherwise run
20,000 ``asyncio.sleep`` calls a second (a future, a timer and a task step each). Here a
stream is a job in a heap by the time its next event is due; one ``call_at`` timer fires for
the earliest, and every job due by then writes its event (``conn.send_chunk``) right there,
without waking its task. Each event is due ``gap`` after the previous one was *due* (not
after it was sent: no drift), unless that one went out late (a busy loop): then a gap after
it went out, so two events never leave back to back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterator
from typing import Any

#: Jobs due within this much of the timer's instant are served by the same firing.
SLACK = 0.0005
#: Lateness past which the next event is scheduled from the send, not from the due time.
LATE = 0.002


class Pacer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, list]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def run(self, conn: Any, events: Iterator[bytes], first: float, gap: float
            ) -> asyncio.Future:
        """Send ``events`` on ``conn``: the first ``first`` seconds from now, then one every
        ``gap``. The future is ``True`` once all were sent, ``False`` if the connection
        closed first."""
        done = self.loop.create_future()
        chunk = next(events, None)
        if chunk is None:
            done.set_result(True)
        else:  # the job holds its next event: the stream ends as its last one is sent
            self._push(self.loop.time() + first, [conn, events, gap, done, chunk])
        return done

    def _push(self, due: float, job: list) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), job))
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self.loop.time()
        limit = now + SLACK
        pop, push, seq = heapq.heappop, heapq.heappush, self._seq
        while heap and heap[0][0] <= limit:
            due, _, job = pop(heap)
            conn, events, gap, done, chunk = job
            if done.done():  # the handler was cancelled (client gone)
                continue
            if conn.closed:
                done.set_result(False)
                continue
            if conn.write_paused:  # the client reads slowly: this event waits
                push(heap, (now + 0.005, next(seq), job))
                continue
            conn.send_chunk(chunk)
            job[4] = chunk = next(events, None)
            if chunk is None:
                done.set_result(True)
                continue
            # On time: due a gap after this one was due (no drift). Late (the loop was
            # busy): a gap after it was sent, as a sleep would, not at once (two events
            # back to back would look coalesced).
            push(heap, (max(due + gap, now + gap - LATE) if gap else now, next(seq), job))
        if heap:
            self._timer_at = heap[0][0]
            self._timer = self.loop.call_at(self._timer_at, self._fire)
