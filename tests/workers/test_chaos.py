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
import uuid

import pytest

from tests.workers.conftest import open_with_cookie, scratch_cookies

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TURNS = int(os.environ.get("CHAOS_TURNS", "60"))
AT_ONCE = 10
USERS = [f"chaos{i}" for i in range(8)]


class Seen:
    """One reply as its client saw it."""

    def __init__(self, kind: str, message_id: str, user_message_id: str, parent_id: str | None):
        self.kind = kind  # "send", "regenerate" or "edit"
        self.message_id = message_id
        self.user_message_id = user_message_id
        self.parent_id = parent_id  # of the user message, as chat.accepted gave it
        self.action = ""
        self.status = ""  # from chat.done, as the client saw it
        self.text = ""  # the reply as the client pieced it together from deltas


class Turn:
    def __init__(self, index: int) -> None:
        self.index = index
        self.content = f"Chaos turn {index}"
        self.conversation_id = ""
        self.sends: list[str] = []  # client_ids of the user messages accepted
        self.replies: list[Seen] = []
        self.refused: list[tuple[str, str]] = []  # (client_id, code) of refused follow-ups


async def accepted_or_refused(client, client_id: str) -> dict:
    while True:
        frame = await client.receive()
        if frame.get("client_id") == client_id and frame["type"] in ("chat.accepted", "chat.error"):
            return frame


async def reply(turn: Turn, kind: str, frame: dict, workers, cookie, rng) -> None:
    """Send `frame`, then follow, disconnect and resume elsewhere, or stop its reply."""
    client = await open_with_cookie(rng.choice(workers), cookie)
    await client.send(frame)
    accepted = await accepted_or_refused(client, frame["client_id"])
    if accepted["type"] == "chat.error":
        # A send may meet the database restart (a first one only as `unavailable`), a
        # follow-up also a save still retrying: refused, it must have saved nothing
        # (checked at the end).
        if kind == "send" and not turn.conversation_id:
            assert accepted["code"] == "unavailable", accepted
        turn.refused.append((frame["client_id"], accepted["code"]))
        await client.close()
        return
    turn.conversation_id = accepted["conversation_id"]
    if kind != "regenerate":
        turn.sends.append(frame["client_id"])
    seen = Seen(kind, accepted["message_id"], accepted["user_message_id"], accepted["parent_id"])
    turn.replies.append(seen)
    parts: dict[int, str] = {}
    resumed = False

    def resume() -> dict:
        return {
            "type": "chat.resume",
            "conversation_id": accepted["conversation_id"],
            "after_seq": max(parts, default=0),
        }

    async def follow(c, timeout: float = 90) -> dict | None:
        async with asyncio.timeout(timeout):
            while True:
                frame = await c.receive(timeout)
                if frame.get("message_id") == seen.message_id and frame["type"] == "chat.delta":
                    assert frame["seq"] not in parts, "a delta came twice"
                    parts[frame["seq"]] = frame["text"]
                elif frame.get("message_id") == seen.message_id and frame["type"] == "chat.done":
                    return frame
                elif (
                    frame["type"] == "chat.idle"
                    and frame["conversation_id"] == accepted["conversation_id"]
                ):
                    return None
                elif (
                    resumed
                    and frame["type"] == "chat.error"
                    and frame.get("code") == "unavailable"
                    and frame.get("conversation_id") == accepted["conversation_id"]
                ):
                    # A resume of a reply that has ended asks the database whether the
                    # conversation is the user's; during the restart that is refused
                    # (`unavailable`, fail-closed), and the client asks again (the page
                    # when the conversation is reloaded).
                    await asyncio.sleep(0.2)
                    await c.send(resume())

    roll = rng.random()
    if roll < 0.3:
        seen.action = "disconnect+resume"
        for _ in range(rng.randint(0, 3)):
            frame = await client.receive()
            if frame["type"] == "chat.delta" and frame["message_id"] == seen.message_id:
                parts[frame["seq"]] = frame["text"]
        await client.close()
        await asyncio.sleep(rng.random() * 0.2)
        client = await open_with_cookie(rng.choice(workers), cookie)
        await client.send(resume())
        resumed = True
    elif roll < 0.5:
        seen.action = "stop"
        while True:
            frame = await client.receive()
            if frame["type"] == "chat.delta" and frame["message_id"] == seen.message_id:
                parts[frame["seq"]] = frame["text"]
                break
            if frame["type"] == "chat.done" and frame["message_id"] == seen.message_id:
                break
        await client.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    else:
        seen.action = "follow"
    done = await follow(client)
    if done is None:
        seen.status = "finished-unseen"  # ended between the disconnect and the resume
    else:
        seen.status = done["status"]
        assert sorted(parts) == list(range(1, len(parts) + 1)), "no gap in seq"
        seen.text = "".join(parts[seq] for seq in sorted(parts))
        assert seen.text == done["content"], (seen.action, sorted(parts), done["status"])
    await client.close()


async def play(turn: Turn, workers, cookies, rng: random.Random) -> None:
    """A new conversation; then, some of the time, a regenerate of its reply or an edit of
    its first message (a new first message), each with the same mix of actions."""
    cookie = cookies[rng.choice(USERS)]
    send = {
        "type": "chat.send",
        "conversation_id": None,
        "persona": None,
        "content": turn.content,
        "client_id": str(uuid.uuid4()),
    }
    await reply(turn, "send", send, workers, cookie, rng)
    if not turn.replies:
        return  # refused during the restart: nothing was saved (checked at the end)
    first = turn.replies[0]
    roll = rng.random()
    if roll < 0.25:
        regenerate = {
            "type": "chat.regenerate",
            "conversation_id": turn.conversation_id,
            "message_id": first.message_id,
            "client_id": str(uuid.uuid4()),
        }
        await reply(turn, "regenerate", regenerate, workers, cookie, rng)
    elif roll < 0.45:
        edit = {
            **send,
            "conversation_id": turn.conversation_id,
            "content": f"{turn.content}, edited",
            "client_id": str(uuid.uuid4()),
            "parent_id": None,
        }
        await reply(turn, "edit", edit, workers, cookie, rng)


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

    # Every accepted message and every reply is saved exactly once, with the status seen,
    # where the client saw it in the tree; a refused follow-up saved nothing.
    await asyncio.sleep(1)
    users = scratch_pg.query(
        "SELECT client_id::text, count(*) FROM conversations_message WHERE role = 'user' "
        "GROUP BY client_id"
    )
    replies = {
        str(mid): (status, content, str(parent))
        for mid, status, content, parent in scratch_pg.query(
            "SELECT id, status, content, parent_id FROM conversations_message "
            "WHERE role = 'assistant'"
        )
    }
    user_parents = {
        str(mid): str(parent) if parent else None
        for mid, parent in scratch_pg.query(
            "SELECT id, parent_id FROM conversations_message WHERE role = 'user'"
        )
    }
    leaves = {
        str(cid): str(leaf)
        for cid, leaf in scratch_pg.query(
            "SELECT id, current_leaf_id FROM conversations_conversation"
        )
    }
    by_client = dict(users)
    sends = [client_id for turn in turns for client_id in turn.sends]
    seen_replies = [seen for turn in turns for seen in turn.replies]
    assert all(by_client.get(client_id) == 1 for client_id in sends)
    assert len(by_client) == len(sends)
    assert len(replies) == len(seen_replies)
    for turn in turns:
        for client_id, _code in turn.refused:
            assert client_id not in by_client
        if not turn.replies:
            continue  # its first send was refused
        for seen in turn.replies:
            status, content, parent = replies[seen.message_id]
            assert parent == seen.user_message_id, seen.kind
            assert user_parents[seen.user_message_id] == seen.parent_id, seen.kind
            if seen.status != "finished-unseen":
                assert (status, content) == (seen.status, seen.text), (seen.kind, seen.action)
        if turn.replies[-1].kind == "regenerate":
            assert turn.replies[-1].user_message_id == turn.replies[0].user_message_id
        if turn.replies[-1].kind == "edit":
            assert turn.replies[-1].parent_id is None
        # The active path ends at the conversation's last reply.
        assert leaves[turn.conversation_id] == turn.replies[-1].message_id, turn.replies[-1].kind
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

    seen = collections.Counter(s.status for s in seen_replies)
    saved = collections.Counter(status for status, _, _ in replies.values())
    actions = collections.Counter(s.action for s in seen_replies)
    kinds = collections.Counter(s.kind for s in seen_replies)
    refused = collections.Counter(code for turn in turns for _, code in turn.refused)
    print(
        f"\nchaos: {TURNS} conversations in {time.monotonic() - started:.1f}s on 2 workers, "
        f"1 PostgreSQL restart\n  replies by kind {dict(kinds)}, sends refused "
        f"{dict(refused)}\n  actions {dict(actions)}\n  client saw {dict(seen)}\n"
        f"  saved {dict(saved)}\n  user messages {len(by_client)} (each once), replies "
        f"{len(replies)} (each once), idle in transaction 0, backends after stop {backends[0][0]}"
    )
