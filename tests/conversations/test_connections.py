"""The property the project exists for: no database connection is held while a reply streams.

Backends are counted in pg_stat_activity from a connection of the test's own, never by
asking the application; the pool's own statistics are read as a second witness.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from django.db import connection

from conversations.db import db_call
from conversations.models import Message
from conversations.replies.registry import registry
from tests.conftest import pool_checked_out, release_shared_thread, settled

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def main_thread_released(alice, persona):
    # Fixtures ran ORM code on this thread; give that connection back before measuring.
    connection.close()


async def sample_while_streaming(socket, probe):
    """Run probe() every few ms from the first delta to chat.done; return its results."""
    samples = []
    frames = []
    while True:
        frame = await socket.receive()
        frames.append(frame)
        if frame["type"] == "chat.done":
            return frames, samples
        if frame["type"] == "chat.delta":
            samples.append(await asyncio.to_thread(probe))


async def test_no_connection_is_checked_out_while_streaming(
    ws, alice, persona, settings, pg_backends, main_thread_released
):
    assert connection.pool is not None, "the suite runs with Django's pool on"
    await release_shared_thread()
    settings.DEMO_TOKEN_DELAY_MS = 15
    settings.DEMO_REPLY_WORDS = 120
    socket = await ws(alice)
    await socket.send_message("A long answer, please")
    accepted = await socket.receive()
    assert accepted["type"] == "chat.accepted"

    frames, samples = await sample_while_streaming(
        socket, lambda: (pool_checked_out(), pg_backends())
    )

    # The last samples may overlap the save that follows the final delta.
    samples = samples[:-2]
    assert len(samples) >= 10, "the stream was long enough to sample"
    assert [checked_out for checked_out, _ in samples] == [0] * len(samples), samples
    print(
        f"\n[pool] {len(samples)} samples while streaming: "
        f"checked out {set(c for c, _ in samples)}, "
        f"backends {sorted({tuple(sorted(b.items())) for _, b in samples})}"
    )
    for _, backends in samples:
        assert backends.get("active", 0) == 0
        assert backends.get("idle in transaction", 0) == 0
    assert frames[-1]["status"] == "complete"


async def test_no_connection_is_open_while_streaming_without_pool(
    ws, alice, persona, settings, pg_backends, pool_off, main_thread_released
):
    settings.DEMO_TOKEN_DELAY_MS = 15
    settings.DEMO_REPLY_WORDS = 120
    await release_shared_thread()
    baseline = sum(settled(pg_backends).values())
    socket = await ws(alice)
    await socket.send_message("A long answer, please")
    assert (await socket.receive())["type"] == "chat.accepted"

    frames, samples = await sample_while_streaming(socket, lambda: sum(pg_backends().values()))

    samples = samples[:-2]
    assert len(samples) >= 10
    assert samples == [baseline] * len(samples)
    print(
        f"\n[no-pool] {len(samples)} samples while streaming: backends {set(samples)}, "
        f"baseline {baseline}"
    )
    assert frames[-1]["status"] == "complete"


async def run_turns(ws, user, turns: int, seed: int) -> dict[str, int]:
    """Turns with random disconnects and stops, eight sockets at a time."""
    rng = random.Random(seed)
    outcomes = {"complete": 0, "stopped": 0, "disconnected": 0}

    async def one_turn() -> None:
        # Sockets of one user also follow each other's replies (multi-tab sync): each turn
        # only looks at frames of its own reply.
        socket = await ws(user)
        client_id = await socket.send_message("Tell me something")
        accepted = await socket.receive()
        while accepted.get("client_id") != client_id:
            accepted = await socket.receive()
        assert accepted["type"] == "chat.accepted", accepted
        message_id = accepted["message_id"]

        async def own(kind: str) -> dict:
            while True:
                frame = await socket.receive(30)
                if frame["type"] == kind and frame.get("message_id") == message_id:
                    return frame

        roll = rng.random()
        if roll < 0.3:
            await socket.disconnect()
            outcomes["disconnected"] += 1
            return
        if roll < 0.6:
            await own("chat.delta")
            await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
        done = await own("chat.done")
        outcomes[done["status"]] += 1
        await socket.disconnect()

    for start in range(0, turns, 8):
        await asyncio.gather(*(one_turn() for _ in range(min(8, turns - start))))
    await asyncio.wait_for(asyncio.gather(*registry.tasks), 60)
    return outcomes


def saved_summary() -> tuple[int, int, dict[str, int]]:
    users = Message.objects.filter(role="user").count()
    replies = Message.objects.filter(role="assistant")
    statuses: dict[str, int] = {}
    for status in replies.values_list("status", flat=True):
        statuses[status] = statuses.get(status, 0) + 1
    return users, replies.count(), statuses


@pytest.fixture(params=["pool", "no-pool"])
def pool_mode(request):
    if request.param == "no-pool":
        request.getfixturevalue("pool_off")
    return request.param


async def test_two_hundred_turns_leave_no_connection_behind(
    ws, alice, persona, settings, pg_backends, pool_mode, main_thread_released
):
    pool = pool_mode
    settings.DEMO_TOKEN_DELAY_MS = 2
    settings.DEMO_REPLY_WORDS = 25
    settings.MAX_GENERATIONS_PER_USER = 1000
    await release_shared_thread()
    baseline = settled(pg_backends)

    outcomes = await run_turns(ws, alice, 200, seed=20261127)

    users, replies, statuses = await db_call(saved_summary)()
    assert users == 200 and replies == 200
    assert statuses.get("stopped", 0) <= outcomes["stopped"]
    assert sum(statuses.values()) == 200
    assert set(statuses) <= {"complete", "stopped"}
    after = await asyncio.to_thread(settled, pg_backends)
    assert after.get("idle in transaction", 0) == 0
    assert after.get("active", 0) == 0
    if pool == "no-pool":
        assert sum(after.values()) == sum(baseline.values())
    else:
        assert pool_checked_out() == 0
        assert sum(after.values()) <= settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]
    print(f"\n[{pool}] outcomes={outcomes} saved={statuses} backends {baseline} -> {after}")
