"""The process-wide flush tick: every stream waiting for its coalescing window waits for the
same timer, the window widens when the event loop runs late, and a stream whose model ended
does not wait for the window at all."""

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
