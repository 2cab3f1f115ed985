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
    woken = [ticker.wait(0.05, 0.05) for _ in range(300)]
    assert len(loop._scheduled) == timers + 1
    await asyncio.wait_for(asyncio.gather(*woken), 5)
    # The next window is a new tick for whoever waits next.
    again = ticker.wait(0.05, 0.05)
    await asyncio.wait_for(again, 5)


async def test_a_late_loop_widens_the_next_window():
    ticker = FlushTicker()
    first = ticker.wait(0.01, 0.01)
    time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop is busy past the tick's due time)
    await first
    assert ticker.lag >= 0.25
    began = asyncio.get_running_loop().time()
    await ticker.wait(0.01, 0.01)
    # The next tick came at least the lag later, not one 10 ms window later.
    assert asyncio.get_running_loop().time() - began >= 0.24  # 0.25, less clock granularity


async def test_the_end_of_the_model_wakes_its_stream_at_once():
    ticker = FlushTicker()
    model_done = asyncio.Event()
    producer = asyncio.ensure_future(model_done.wait())
    pacer = Pacer(ticker, producer)
    waiting = asyncio.ensure_future(pacer.next(3600, 3600))  # an hour-long window
    await asyncio.sleep(0)
    model_done.set()
    await asyncio.wait_for(waiting, 5)  # without the end, this would wait the hour
    await asyncio.wait_for(pacer.next(3600, 3600), 5)  # ended: no more waiting


async def test_a_stream_cancelled_while_waiting_leaves_the_others_their_tick():
    ticker = FlushTicker()
    stopped = asyncio.ensure_future(_wait_tick(ticker))
    other = asyncio.ensure_future(_wait_tick(ticker))
    await asyncio.sleep(0)
    stopped.cancel()
    await asyncio.wait_for(other, 5)
    assert stopped.cancelled()


async def _wait_tick(ticker: FlushTicker) -> None:
    await ticker.wait(0.05, 0.05)


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


async def _windows(ticker: FlushTicker, ticks: int, window: float, widest: float) -> list[float]:
    """The window each of `ticks` ticks is set to (before the lag, which no test controls)."""
    windows = []
    for _ in range(ticks):
        woken = ticker.wait(window, widest)
        windows.append(ticker.window)
        await woken
    return windows


async def test_a_worker_out_of_cpu_widens_the_window_up_to_the_widest_then_narrows_it_again():
    clock = CpuClock(share=1.0)
    ticker = FlushTicker(cpu_clock=clock)
    # A whole core used since the last tick: after the first tick (the first reading of
    # the clock), each doubles the next window, 10 ms to 20, 40, then the widest, 80 ms.
    windows = await _windows(ticker, 6, 0.01, 0.08)
    assert windows == pytest.approx([0.01, 0.01, 0.02, 0.04, 0.08, 0.08])
    assert ticker.stretch == 8  # at the widest it stops doubling
    # The worker idle again: each tick halves the window back to the configured 10 ms.
    clock.share = 0.0
    windows = await _windows(ticker, 4, 0.01, 0.08)
    assert windows == pytest.approx([0.08, 0.04, 0.02, 0.01])
    assert ticker.stretch == 1


async def test_the_widest_caps_the_window_between_doublings():
    ticker = FlushTicker(cpu_clock=CpuClock(share=1.0))
    windows = await _windows(ticker, 6, 0.01, 0.05)
    # 10, 20, 40, then 50 ms (not 80): the widest, and no further.
    assert windows == pytest.approx([0.01, 0.01, 0.02, 0.04, 0.05, 0.05])


async def test_between_the_thresholds_the_window_stays_as_it_is():
    clock = CpuClock(share=1.0)
    ticker = FlushTicker(cpu_clock=clock)
    await _windows(ticker, 3, 0.01, 0.08)
    widened = ticker.stretch
    assert widened > 1
    clock.share = 0.75  # busier than IDLE, less than BUSY
    await _windows(ticker, 3, 0.01, 0.08)
    assert ticker.stretch == widened


async def test_coalescing_off_stays_off_when_the_worker_is_out_of_cpu():
    ticker = FlushTicker(cpu_clock=CpuClock(share=1.0))
    windows = await _windows(ticker, 6, 0.0, 0.08)
    # STREAM_COALESCE_MS=0: every tick at once (or the lag), however busy the worker.
    assert windows == [0.0] * 6
    assert ticker.stretch == 1


async def test_after_an_idle_spell_the_next_stream_starts_from_the_configured_window():
    clock = CpuClock(share=1.0)
    ticker = FlushTicker(cpu_clock=clock)
    await _windows(ticker, 5, 0.01, 0.08)
    assert ticker.stretch == 8
    # No stream for longer than the widest window, the worker idle meanwhile.
    clock.share = 0.0
    await asyncio.sleep(0.1)
    woken = ticker.wait(0.01, 0.08)
    assert ticker.window == pytest.approx(0.01)
    assert ticker.lag == 0.0
    await woken


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
        most = 1
        end = loop.time() + 10.0  # on a machine others share, the core may come late
        while loop.time() < end and most < 4:
            await ticker.wait(0.01, 0.04)
            most = max(most, ticker.stretch)
    finally:
        spinning = False
        await spinner
    assert most == 4  # 10 ms to 20 to 40: the window grew while the loop spun
    # Idle now: a few ticks later the window is back to the configured one.
    for _ in range(3):
        await ticker.wait(0.05, 0.05)
    assert ticker.stretch == 1
