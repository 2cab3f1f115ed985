"""One flush tick per process for every stream's coalescing window.

A stream sends its first delta at once, then what arrived since, once per window. With a
timer per stream (`asyncio.wait(..., timeout=window)`), N streams cost N timers, N waits and
their futures every window. Here every stream waiting for the window waits for the same
tick: one timer per window for the whole process, and a plain future per waiting stream.

Under load the tick widens the window, on two signals:
- the loop's lag: the next tick is due at least as late after this one as this one fired
  late. A loop that runs late makes fewer, larger frames rather than falling further behind;
- the process's CPU: a worker that used more than `BUSY` of a core between two ticks doubles
  the window for the next one, up to `widest`, and halves it again once it uses less than
  `IDLE`. A worker can be out of CPU with little lag: the app's turn begins then wait
  for their place (conversations/replies/admission.py) rather than run late, and every
  frame a stream sends, fewer tokens apiece, leaves them less. A frame's cost (building
  it, the server's send, the kernel's write) is most of a token's: at 1,500 ramped
  streams, widening cut frames a token from 0.49 to 0.18, the worker's CPU a token from 29
  to 21 µs, the slowest `chat.accepted` (p99) from 2.0 s to 0.38 s and p99 completion from
  6.04 to 4.38 s (bench/results/busy-window, 3 repeats each).

Pure asyncio, no Django: the benchmark's ceiling (bench/ceiling.py) runs the same rule.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

# A core's share the worker used between two ticks, above which the window doubles, and
# below which it halves back towards the configured one (between them it stays as it is).
BUSY = 0.9
IDLE = 0.6


class FlushTicker:
    def __init__(self, cpu_clock: Callable[[], float] = time.process_time) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[asyncio.Future[None]] = []
        self.due: float | None = None  # the next tick, in loop time, while one is set
        self.window = 0.0  # the window the last tick was set to, before the lag
        self.lag = 0.0  # how late the last tick fired, in seconds
        self.stretch = 1  # the window's multiple while the worker is short of CPU
        self._room = False  # the window now set is narrower than the widest: it may double
        # The process's CPU time, every thread's (the database threads' too: with the GIL,
        # what they use the event loop cannot).
        self._cpu_clock = cpu_clock
        self._mark: tuple[float, float] | None = None  # (loop time, CPU time) at the last tick

    def wait(self, window: float, widest: float) -> asyncio.Future[None]:
        """A future done at the next tick. The first waiter since the last tick sets it:
        due `window` times `stretch` later, no more than `widest` and no less than `window`,
        or the lag if that is longer. A `window` of 0 (coalescing off) never stretches."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per test)
            self._loop, self._waiting, self.due, self.lag = loop, [], None, 0.0
            self.stretch, self._mark = 1, None
        woken: asyncio.Future[None] = loop.create_future()
        self._waiting.append(woken)
        if self.due is None:
            now = loop.time()
            if self._mark is not None and now - self._mark[0] > max(window, widest):
                self._after_idle(now)
            widened = window * self.stretch
            # At the widest the stretch stops doubling, so that it narrows again at the
            # first tick the worker has CPU to spare.
            self._room = 0 < widened < widest
            self.window = min(widened, max(window, widest))
            self.due = now + max(self.window, self.lag)
            loop.call_at(self.due, self._tick)
        return woken

    def _tick(self) -> None:
        assert self._loop is not None and self.due is not None
        now = self._loop.time()
        self.lag = max(0.0, now - self.due)
        self._measure(now)
        waiting, self._waiting, self.due = self._waiting, [], None
        for woken in waiting:
            _wake(woken)

    def _measure(self, now: float) -> None:
        """Double or halve `stretch` by the CPU the worker used since the last tick."""
        busy = self._busy_since_mark(now)
        if busy is None:
            return
        if busy > BUSY and self._room:
            self.stretch *= 2
        elif busy < IDLE:
            self.stretch = max(self.stretch // 2, 1)

    def _after_idle(self, now: float) -> None:
        """No stream waited for a whole window: if the worker had CPU to spare meanwhile,
        the next stream starts from the configured window, as late ticks before the gap
        no longer say anything about the loop."""
        busy = self._busy_since_mark(now)
        if busy is not None and busy < IDLE:
            self.stretch, self.lag = 1, 0.0

    def _busy_since_mark(self, now: float) -> float | None:
        """The share of a core the process used since the mark (None before the first, or
        with no time gone by), and the mark moved to now."""
        cpu = self._cpu_clock()
        mark, self._mark = self._mark, (now, cpu)
        if mark is None or now <= mark[0]:
            return None
        return (cpu - mark[1]) / (now - mark[0])


class Pacer:
    """One stream's side of the tick: wait for the next tick, or for the end of the model's
    stream (its last text goes out without waiting for the window)."""

    def __init__(self, ticker: FlushTicker, producer: asyncio.Future[Any]) -> None:
        self._ticker = ticker
        self._producer = producer
        self._woken: asyncio.Future[None] | None = None
        producer.add_done_callback(self._producer_done)

    async def next(self, window: float, widest: float) -> None:
        if self._producer.done():
            return
        self._woken = self._ticker.wait(window, widest)
        await self._woken

    def _producer_done(self, _: asyncio.Future[Any]) -> None:
        if self._woken is not None:
            _wake(self._woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a stream cancelled while it waited, or woken by its producer
        woken.set_result(None)


# The process's ticker: every generation on this event loop shares it.
ticker = FlushTicker()
