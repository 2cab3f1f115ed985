"""A burst of sends: their begin transactions take turns, TURN_BEGINS_AT_ONCE at a time,
so the event loop that streams the replies keeps its share of the interpreter; a begin that
waits too long for its place is answered `busy` at once, with nothing saved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conversations.db import db_call
from conversations.models import Message
from conversations.replies import start
from tests.conftest import make_user

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


class Overlap:
    """The real begin (`start.turn_call`: on the event loop, or on a turn thread with
    TURN_DB_ON_LOOP off), held a moment, counting how many run at once."""

    def __init__(self, hold: float, monkeypatch: Any) -> None:
        self.hold = hold
        self.running = 0
        self.peak = 0
        self._real = start.turn_call
        monkeypatch.setattr(start, "turn_call", self)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.hold)  # long enough for every other send to pile up
            return await self._real(*args, **kwargs)
        finally:
            self.running -= 1


@pytest.fixture(params=[True, False], ids=["on the loop", "on threads"])
def begins(request: Any, fast_demo: Any) -> Any:
    fast_demo.TURN_DB_ON_LOOP = request.param
    return fast_demo


async def sockets_of(ws, count: int) -> list[Any]:
    users = [await db_call(make_user)(f"burst{index}") for index in range(count)]
    return [await ws(user) for user in users]


async def test_a_burst_of_sends_begins_two_at_a_time(ws, persona, begins, monkeypatch):
    begins.TURN_BEGINS_AT_ONCE = 2
    overlap = Overlap(0.05, monkeypatch)
    sockets = await sockets_of(ws, 8)
    for index, socket in enumerate(sockets):
        await socket.send_message(f"question {index}")
    answers = [await socket.receive_until("chat.done") for socket in sockets]

    assert [frames[0]["type"] for frames in answers] == ["chat.accepted"] * 8
    assert [frames[-1]["status"] for frames in answers] == ["complete"] * 8
    # Without the queue all eight ran at once (on the loop, or on the pool's ten threads).
    assert overlap.peak == 2


async def test_a_send_that_waits_too_long_for_its_place_is_busy_and_saves_nothing(
    ws, persona, begins, monkeypatch
):
    begins.TURN_BEGINS_AT_ONCE = 1
    begins.TURN_BEGIN_WAIT_SECONDS = 0.3
    Overlap(1.5, monkeypatch)  # a struggling database
    first, second = await sockets_of(ws, 2)
    await first.send_message("slow")
    await asyncio.sleep(0.1)
    await second.send_message("behind it")

    refused = await second.receive(timeout=5)
    assert refused["type"] == "chat.error"
    assert refused["code"] == "busy"
    assert (await first.receive_until("chat.done"))[-1]["status"] == "complete"
    assert not await Message.objects.filter(content="behind it").aexists()
    # The place freed, the same send goes through.
    await second.send_message("behind it")
    assert (await second.receive_until("chat.done"))[-1]["status"] == "complete"
