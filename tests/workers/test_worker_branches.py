"""Regenerated replies across two workers: resume elsewhere, and a worker killed outright."""

from __future__ import annotations

import uuid

import pytest

from conversations.db import db_call
from conversations.models import Conversation, Message
from tests.workers.conftest import deltas_text, open_client
from tests.workers.test_workers import wait_saved

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]


def replies_to(user_message_id: str) -> list[tuple[str, str]]:
    return [
        (str(i), status)
        for i, status in Message.objects.filter(parent_id=uuid.UUID(user_message_id))
        .order_by("created_at")
        .values_list("id", "status")
    ]


def leaf(conversation_id: str) -> str:
    return str(Conversation.objects.get(id=conversation_id).current_leaf_id)


async def test_a_regenerate_resumes_on_another_worker_and_is_saved_once(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    on_a = await open_client(a, alice)
    await on_a.send_message("First version, please")
    first = (await on_a.until("chat.done"))[0]
    conversation_id = first["conversation_id"]
    client_id = str(uuid.uuid4())
    regenerate = {
        "type": "chat.regenerate",
        "conversation_id": conversation_id,
        "message_id": first["message_id"],
        "client_id": client_id,
    }
    await on_a.send(regenerate)
    accepted = await on_a.receive()
    assert accepted["type"] == "chat.accepted"
    seen = [await on_a.receive() for _ in range(2)]

    on_b = await open_client(b, alice)
    # The same request re-sent from B (a page that reconnected there) is answered as a
    # resume of the reply streaming on A: no second version.
    await on_b.send(regenerate)
    from_b = await on_b.until("chat.done")
    assert from_b[0]["type"] == "chat.accepted"
    assert from_b[0]["message_id"] == accepted["message_id"]
    from_a = seen + await on_a.until("chat.done")
    assert [f["type"] for f in from_a].count("chat.accepted") == 0, "no second generation"

    assert deltas_text(from_b) == deltas_text(from_a) == from_b[-1]["content"]
    assert await wait_saved(accepted["message_id"]) == ("complete", from_b[-1]["content"])
    assert await db_call(replies_to)(first["user_message_id"]) == [
        (first["message_id"], "complete"),
        (accepted["message_id"], "complete"),
    ]
    assert await db_call(leaf)(conversation_id) == accepted["message_id"]
    for client in (on_a, on_b):
        await client.close()


async def test_a_regenerate_whose_worker_is_killed_is_saved_interrupted(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    on_a = await open_client(a, alice)
    await on_a.send_message("Survive a crash")
    first = (await on_a.until("chat.done"))[0]
    await on_a.send(
        {
            "type": "chat.regenerate",
            "conversation_id": first["conversation_id"],
            "message_id": first["message_id"],
            "client_id": str(uuid.uuid4()),
        }
    )
    accepted = await on_a.receive()
    seen = [await on_a.receive() for _ in range(3)]
    on_b = await open_client(b, alice)
    await on_b.send(
        {"type": "chat.resume", "conversation_id": first["conversation_id"], "after_seq": 0}
    )
    await on_b.until("chat.delta")

    a.kill()
    done = (await on_b.until("chat.done", timeout=30))[-1]

    assert done["message_id"] == accepted["message_id"]
    assert done["status"] == "interrupted"
    assert done["content"].startswith(deltas_text(seen))
    assert await wait_saved(accepted["message_id"]) == ("interrupted", done["content"])
    # The first version stands beside it, and the active path ends at the new one.
    assert await db_call(replies_to)(first["user_message_id"]) == [
        (first["message_id"], "complete"),
        (accepted["message_id"], "interrupted"),
    ]
    assert await db_call(leaf)(first["conversation_id"]) == accepted["message_id"]
    await on_b.close()
