"""The process-wide flush tick: every stream waiting for its coalescing window waits for the
same timer, the window widens when the event loop runs late or the worker is short of CPU,
and a stream whose model ended does not wait for the window at all."""

from __future__ import annotations

import asyncio
import time

import pytest

from conversations.replies.ticker import FlushTicker, Pacer

pytestmark = pytest.mark.asyncio


async def test_many_streams_share_one_timer():
    ticker = FlushTicker()
    loop = asyncio.get_running_loop()
    timers = len(loop._scheduled)
    woken = [ticker.wait(0.05) for _ in range(300)]
    assert len(loop._scheduled) == timers + 1
    await asyncio.wait_for(asyncio.gather(*woken), 5)
    # The next window is a new tick for whoever waits next.
    again = ticker.wait(0.05)
    await asyncio.wait_for(again, 5)


async def test_a_late_loop_widens_the_next_window():
    ticker = FlushTicker()
    first = ticker.wait(0.01)
    time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop is busy past the tick's due time)
    await first
    assert ticker.lag >= 0.25
    began = asyncio.get_running_loop().time()
    await ticker.wait(0.01)
    # The next tick came at least the lag later, not one 10 ms window later.
    assert asyncio.get_running_loop().time() - began >= 0.24  # 0.25, less clock granularity


async def test_the_end_of_the_model_wakes_its_stream_at_once():
    ticker = FlushTicker()
    model_done = asyncio.Event()
    producer = asyncio.ensure_future(model_done.wait())
    pacer = Pacer(ticker, producer)
    waiting = asyncio.ensure_future(pacer.next(3600))  # an hour-long window
    await asyncio.sleep(0)
    model_done.set()
    await asyncio.wait_for(waiting, 5)  # without the end, this would wait the hour
    await asyncio.wait_for(pacer.next(3600), 5)  # ended: no more waiting


async def test_a_stream_cancelled_while_waiting_leaves_the_others_their_tick():
    ticker = FlushTicker()
    stopped = asyncio.ensure_future(_wait_tick(ticker))
    other = asyncio.ensure_future(_wait_tick(ticker))
    await asyncio.sleep(0)
    stopped.cancel()
    await asyncio.wait_for(other, 5)
    assert stopped.cancelled()


async def _wait_tick(ticker: FlushTicker) -> None:
    await ticker.wait(0.05)


class CpuClock:
    """The process's CPU time as the ticker reads it, run at `share` of the loop's clock: 1.0
    is a worker that used a whole core between two ticks, 0.0 one that sat idle."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._loop = asyncio.get_running_loop()
        self._cpu = 0.0
        self._at = self._loop.time()

    def __call__(self) -> float:
        now = self._loop.time()
        self._cpu += (now - self._at) * self.share
        self._at = now
        return self._cpu


async def _tick_gaps(ticker: FlushTicker, ticks: int, window: float, widest: float) -> list[float]:
    loop = asyncio.get_running_loop()
    gaps = []
    for _ in range(ticks):
        began = loop.time()
        await ticker.wait(window, widest)
        gaps.append(loop.time() - began)
    return gaps


async def test_a_worker_out_of_cpu_widens_the_window_up_to_the_widest_then_narrows_it_again():
    clock = CpuClock(share=1.0)
    ticker = FlushTicker(cpu_clock=clock)
    # A whole core used since the last tick: each tick doubles the next window, 10 ms to 20,
    # 40, then the widest, 80 ms, and no further.
    gaps = await _tick_gaps(ticker, 6, 0.01, 0.08)
    assert gaps[-1] >= 0.079
    # At the widest the stretch stops growing: uncapped, 32 by now would make it 320 ms.
    assert ticker.stretch == 8
    assert max(gaps) < 0.3
    # The worker idle again: the first tick halves the window, the next ones bring it back
    # to the configured 10 ms.
    clock.share = 0.0
    await _tick_gaps(ticker, 1, 0.01, 0.08)
    assert ticker.stretch == 4
    await _tick_gaps(ticker, 2, 0.01, 0.08)
    assert ticker.stretch == 1
    assert (await _tick_gaps(ticker, 1, 0.01, 0.08))[0] < 0.079


async def test_between_the_thresholds_the_window_stays_as_it_is():
    clock = CpuClock(share=1.0)
    ticker = FlushTicker(cpu_clock=clock)
    await _tick_gaps(ticker, 2, 0.01, 0.08)
    widened = ticker.stretch
    assert widened > 1
    clock.share = 0.75  # busier than IDLE, less than BUSY
    await _tick_gaps(ticker, 3, 0.01, 0.08)
    assert ticker.stretch == widened


async def test_coalescing_off_stays_off_when_the_worker_is_out_of_cpu():
    ticker = FlushTicker(cpu_clock=CpuClock(share=1.0))
    await _tick_gaps(ticker, 4, 0.0, 0.08)
    assert ticker.stretch == 1
    # STREAM_COALESCE_MS=0: every tick at once, however busy the worker.
    assert max(await _tick_gaps(ticker, 3, 0.0, 0.08)) < 0.07


async def test_a_busy_worker_widens_the_window_on_the_real_cpu_clock():
    """No clock stand-in: the loop spins the process's own CPU between ticks."""
    ticker = FlushTicker()
    loop = asyncio.get_running_loop()
    spinning = True

    async def spin() -> None:
        while spinning:
            until = time.perf_counter() + 0.005
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    spinner = asyncio.ensure_future(spin())
    try:
        widest = 0
        end = loop.time() + 2.0
        while loop.time() < end and widest < 4:
            await ticker.wait(0.01, 0.04)
            widest = max(widest, ticker.stretch)
    finally:
        spinning = False
        await spinner
    assert widest >= 4  # 10 ms to 20 to 40: the window grew while the loop spun
    # Idle now: a tick of a 50 ms window later the worker used little CPU, and the window
    # narrows again.
    for _ in range(3):
        await ticker.wait(0.05, 0.05)
    assert ticker.stretch == 1
