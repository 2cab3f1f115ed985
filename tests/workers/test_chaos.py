"""The chaos run: many turns with disconnects, resumes on the other worker, stops, provider
errors mid-stream and one PostgreSQL restart. Nothing may be lost or saved twice.

CI runs a short version; `make chaos` runs 500 turns (CHAOS_TURNS).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time

import pytest

from tests.workers.conftest import open_with_cookie, scratch_cookies

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TURNS = int(os.environ.get("CHAOS_TURNS", "60"))
AT_ONCE = 10
USERS = [f"chaos{i}" for i in range(8)]


class Turn:
    def __init__(self, index: int) -> None:
        self.index = index
        self.content = f"Chaos turn {index}"
        self.client_id = ""
        self.message_id = ""
        self.status = ""  # from chat.done, as the client saw it
        self.text = ""  # the reply as the client pieced it together from deltas
        self.action = ""


async def play(turn: Turn, workers, cookies, rng: random.Random) -> None:
    cookie = cookies[rng.choice(USERS)]
    client = await open_with_cookie(rng.choice(workers), cookie)
    turn.client_id = await client.send_message(turn.content)
    accepted = (await client.until("chat.accepted", client_id=turn.client_id))[-1]
    turn.message_id = accepted["message_id"]
    parts: dict[int, str] = {}

    async def follow(c, timeout: float = 90) -> dict | None:
        async with asyncio.timeout(timeout):
            while True:
                frame = await c.receive(timeout)
                if frame.get("message_id") == turn.message_id and frame["type"] == "chat.delta":
                    assert frame["seq"] not in parts, "a delta came twice"
                    parts[frame["seq"]] = frame["text"]
                elif frame.get("message_id") == turn.message_id and frame["type"] == "chat.done":
                    return frame
                elif (
                    frame["type"] == "chat.idle"
                    and frame["conversation_id"] == accepted["conversation_id"]
                ):
                    return None

    roll = rng.random()
    if roll < 0.3:
        turn.action = "disconnect+resume"
        for _ in range(rng.randint(0, 3)):
            frame = await client.receive()
            if frame["type"] == "chat.delta" and frame["message_id"] == turn.message_id:
                parts[frame["seq"]] = frame["text"]
        await client.close()
        await asyncio.sleep(rng.random() * 0.2)
        client = await open_with_cookie(rng.choice(workers), cookie)
        await client.send(
            {
                "type": "chat.resume",
                "conversation_id": accepted["conversation_id"],
                "after_seq": max(parts, default=0),
            }
        )
    elif roll < 0.5:
        turn.action = "stop"
        while True:
            frame = await client.receive()
            if frame["type"] == "chat.delta" and frame["message_id"] == turn.message_id:
                parts[frame["seq"]] = frame["text"]
                break
            if frame["type"] == "chat.done" and frame["message_id"] == turn.message_id:
                break
        await client.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    else:
        turn.action = "follow"
    done = await follow(client)
    if done is None:
        turn.status = "finished-unseen"  # ended between the disconnect and the resume
    else:
        turn.status = done["status"]
        assert sorted(parts) == list(range(1, len(parts) + 1)), "no gap in seq"
        turn.text = "".join(parts[seq] for seq in sorted(parts))
        assert turn.text == done["content"], (turn.action, sorted(parts), done["status"])
    await client.close()


async def test_chaos_run_loses_nothing_and_leaks_nothing(spawn, scratch_pg):
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, USERS)
    common = {
        "DATABASE_URL": scratch_pg.url,
        "DEMO_TOKEN_DELAY_MS": "8",
        "DEMO_REPLY_WORDS": "30",
        "DEMO_FAIL_RATE": "10",
        "DB_POOL_TIMEOUT": "2",
        "DB_CONNECT_TIMEOUT": "1",
        "REPLY_SAVE_RETRY_SECONDS": "60",
    }
    workers = [spawn("A", **common), spawn("B", **common)]
    rng = random.Random(20261127)
    turns = [Turn(i) for i in range(TURNS)]
    restart_at = TURNS // 2
    started = time.monotonic()

    for batch_start in range(0, TURNS, AT_ONCE):
        batch = turns[batch_start : batch_start + AT_ONCE]
        jobs = [play(turn, workers, cookies, rng) for turn in batch]
        if batch_start <= restart_at < batch_start + AT_ONCE:
            jobs.append(asyncio.to_thread(scratch_pg.restart))
        await asyncio.gather(*jobs)

    # Every accepted message and every reply is saved exactly once, with the status seen.
    await asyncio.sleep(1)
    users = scratch_pg.query(
        "SELECT client_id::text, count(*) FROM conversations_message WHERE role = 'user' "
        "GROUP BY client_id"
    )
    replies = dict(
        (str(mid), (status, content))
        for mid, status, content in scratch_pg.query(
            "SELECT id, status, content FROM conversations_message WHERE role = 'assistant'"
        )
    )
    by_client = dict(users)
    assert all(by_client.get(turn.client_id) == 1 for turn in turns)
    assert len(by_client) == TURNS
    assert len(replies) == TURNS
    for turn in turns:
        status, content = replies[turn.message_id]
        if turn.status != "finished-unseen":
            assert (status, content) == (turn.status, turn.text), turn.action
    in_transaction = scratch_pg.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'chat' "
        "AND state = 'idle in transaction'"
    )
    assert in_transaction == [(0,)]

    for worker in workers:
        worker.terminate()
    for worker in workers:
        await asyncio.to_thread(worker.wait, 30)
    backends = scratch_pg.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'chat' AND pid <> pg_backend_pid()"
    )
    assert backends == [(0,)], "every worker connection went away with its worker"

    seen = collections.Counter(turn.status for turn in turns)
    saved = collections.Counter(status for status, _ in replies.values())
    actions = collections.Counter(turn.action for turn in turns)
    print(
        f"\nchaos: {TURNS} turns in {time.monotonic() - started:.1f}s on 2 workers, "
        f"1 PostgreSQL restart\n  actions {dict(actions)}\n  client saw {dict(seen)}\n"
        f"  saved {dict(saved)}\n  user messages {len(by_client)} (each once), replies "
        f"{len(replies)} (each once), idle in transaction 0, backends after stop {backends[0][0]}"
    )
