"""Admission of turn begins: a burst of sends queues here, first come first served, and at
most `TURN_BEGINS_AT_ONCE` of them run their transaction at a time.

A turn's begin ran on a database thread then (it runs on the event loop now, on PostgreSQL:
conversations/db.py), and most of its time there was Python (building the query, reading
the rows), which held the GIL. Ten begins at once (the thread pool's
size then) leave the event loop, which streams every reply in progress and writes every
`chat.accepted`, about a tenth of the interpreter: a burst of 250 starts stalled the
streams already running and the starts themselves. A few at a time keep PostgreSQL busy
(some begins wait on it while another runs Python) and leave the loop its share. Under a
250-client burst (bench/, 3 repeats each), the median first token was 395 ms with no limit,
293 ms with 2 at a time and 257 ms with 4; the slowest first tokens (p99) were 452, 566 and
474 ms: 4 is the default.

The queue is bounded twice. Each waiting begin holds a reservation, and `Registry.reserve`
refuses (`busy`, at once) past `MAX_GENERATIONS_PER_WORKER` replies and reservations. And a
begin that waited `TURN_BEGIN_WAIT_SECONDS` for its place is answered `busy` rather than
later still: the begins ahead of it are slow (the database is struggling or away), and
the user hears so in seconds, with nothing saved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from django.conf import settings

from conversations import metrics
from conversations.errors import Busy


class Admission:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Semaphore | None = None
        self._size = 0
        self.waiting = 0

    def _semaphore(self) -> asyncio.Semaphore | None:
        size = settings.TURN_BEGINS_AT_ONCE
        if size <= 0:
            return None
        loop = asyncio.get_running_loop()
        if self._gate is None or loop is not self._loop or size != self._size:
            # One per event loop (tests run one per test), FIFO: asyncio wakes waiters in order.
            self._loop, self._gate, self._size = loop, asyncio.Semaphore(size), size
        return self._gate

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the places for a turn's begin transaction."""
        gate = self._semaphore()
        if gate is None:
            yield
            return
        self.waiting += 1
        try:
            # Not wait_for: on Python 3.11 it runs the acquire as a task of its own, and a
            # socket closing (its task cancelled) just as that task is granted a place
            # loses the place for good.
            async with asyncio.timeout(settings.TURN_BEGIN_WAIT_SECONDS):
                await gate.acquire()  # a free place is taken without a pass of the loop
        except TimeoutError:
            raise Busy("The server is busy; try again in a moment.") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            gate.release()


admission = Admission()
metrics.TURN_BEGINS_WAITING.set_function(lambda: float(admission.waiting))
