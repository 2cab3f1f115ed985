"""One flush tick per process for every stream's coalescing window.

A stream sends its first delta at once, then what arrived since, once per window. With a
timer per stream (`asyncio.wait(..., timeout=window)`), N streams cost N timers, N waits and
their futures every window. Here every stream waiting for the window waits for the same
tick: one timer per window for the whole process, and a plain future per waiting stream.

Under load the tick widens the window: the next one is due at least the loop's lag after
this one (how late this tick fired). A loop that runs late makes fewer, larger frames
rather than falling further behind.

Pure asyncio, no Django: the benchmark's ceiling (bench/ceiling.py) runs the same rule.
"""

from __future__ import annotations

import asyncio
from typing import Any


class FlushTicker:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[asyncio.Future[None]] = []
        self._due: float | None = None
        self.lag = 0.0  # how late the last tick fired, in seconds

    def wait(self, window: float) -> asyncio.Future[None]:
        """A future done at the next tick, due `window` (or the lag, if longer) from the
        first waiter since the last tick."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per test)
            self._loop, self._waiting, self._due, self.lag = loop, [], None, 0.0
        woken: asyncio.Future[None] = loop.create_future()
        self._waiting.append(woken)
        if self._due is None:
            self._due = loop.time() + max(window, self.lag)
            loop.call_at(self._due, self._tick)
        return woken

    def _tick(self) -> None:
        assert self._loop is not None and self._due is not None
        self.lag = max(0.0, self._loop.time() - self._due)
        waiting, self._waiting, self._due = self._waiting, [], None
        for woken in waiting:
            _wake(woken)


class Pacer:
    """One stream's side of the tick: wait for the next tick, or for the end of the model's
    stream (its last text goes out without waiting for the window)."""

    def __init__(self, ticker: FlushTicker, producer: asyncio.Future[Any]) -> None:
        self._ticker = ticker
        self._producer = producer
        self._woken: asyncio.Future[None] | None = None
        producer.add_done_callback(self._producer_done)

    async def next(self, window: float) -> None:
        if self._producer.done():
            return
        self._woken = self._ticker.wait(window)
        await self._woken

    def _producer_done(self, _: asyncio.Future[Any]) -> None:
        if self._woken is not None:
            _wake(self._woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a stream cancelled while it waited, or woken by its producer
        woken.set_result(None)


# The process's ticker: every generation on this event loop shares it.
ticker = FlushTicker()
