"""Versions over the socket: regenerate, edit and resend, and where the active path goes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conversations.db import db_call
from conversations.models import Conversation, Message
from conversations.services import path_history, reply_save
from tests.conftest import Socket

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def rows() -> list[tuple[str, str, str | None]]:
    """(id, role, parent id) of every message, oldest first."""
    return [
        (str(i), role, str(p) if p else None)
        for i, role, p in Message.objects.order_by("created_at").values_list(
            "id", "role", "parent_id"
        )
    ]


def leaf_of(conversation_id: str) -> str | None:
    leaf = Conversation.objects.get(id=conversation_id).current_leaf_id
    return str(leaf) if leaf else None


def path_texts(conversation_id: str) -> list[str]:
    leaf = Conversation.objects.get(id=conversation_id).current_leaf_id
    return [h.content for h in path_history(leaf_id=leaf, limit=100)]


async def turn(socket: Socket, content: str, **send: Any) -> tuple[dict, dict]:
    await socket.send_message(content, **send)
    frames = await socket.receive_until("chat.done")
    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    return accepted, frames[-1]


async def regenerated(socket: Socket, conversation_id: str, message_id: str, **kw: Any) -> tuple:
    await socket.regenerate(conversation_id, message_id, **kw)
    frames = await socket.receive_until("chat.done")
    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    return accepted, frames[-1]


async def test_regenerate_makes_a_sibling_reply_and_moves_the_active_path(
    ws, alice, persona, fast_demo
):
    socket = await ws(alice)
    first, _ = await turn(socket, "Tell me a story")
    conversation_id = first["conversation_id"]

    again, done = await regenerated(socket, conversation_id, first["message_id"])

    assert again["user_message_id"] == first["user_message_id"]
    assert again["message_id"] != first["message_id"]
    assert again["regenerate"] is True
    assert done["status"] == "complete" and done["content"]
    replies = [r for r in await db_call(rows)() if r[1] == "assistant"]
    assert [(r[0], r[2]) for r in replies] == [
        (first["message_id"], first["user_message_id"]),
        (again["message_id"], first["user_message_id"]),
    ]
    assert await db_call(leaf_of)(conversation_id) == again["message_id"]
    # The next message continues the new version, not the first one.
    follow_up, _ = await turn(socket, "And then?", conversation_id=conversation_id)
    assert follow_up["parent_id"] == again["message_id"]


async def test_a_repeated_regenerate_is_answered_once(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    first, _ = await turn(socket, "Hello")
    client_id = str(uuid.uuid4())
    again, done = await regenerated(
        socket, first["conversation_id"], first["message_id"], client_id=client_id
    )
    repeat, repeat_done = await regenerated(
        socket, first["conversation_id"], first["message_id"], client_id=client_id
    )
    assert repeat["message_id"] == again["message_id"]
    assert repeat_done["content"] == done["content"]
    assert await db_call(Message.objects.filter(role="assistant").count)() == 2


async def test_regenerate_while_a_reply_streams_is_busy(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 50
    settings.DEMO_REPLY_WORDS = 200
    socket = await ws(alice)
    await socket.send_message("Hello")
    accepted = await socket.receive_type("chat.accepted")
    saved = await db_call(reply_save)(
        message_id=uuid.uuid4(),
        conversation_id=uuid.UUID(accepted["conversation_id"]),
        user_message_id=uuid.UUID(accepted["user_message_id"]),
        content="an earlier version",
        status="complete",
        input_tokens=None,
        output_tokens=None,
        error="",
    )
    assert saved is not None
    await socket.regenerate(accepted["conversation_id"], str(saved.message_id))
    refusal = await socket.receive_type("chat.error")
    assert refusal["code"] == "busy"
    await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    await socket.receive_until("chat.done")


async def test_regenerate_of_what_is_not_ones_own_reply_is_not_found(
    ws, alice, bob, persona, fast_demo
):
    alices = await ws(alice)
    first, _ = await turn(alices, "Secret plans")
    before = await db_call(rows)()
    bobs = await ws(bob)
    cases = [
        (first["conversation_id"], first["message_id"], bobs),  # bob's view of alice's reply
        (first["conversation_id"], first["user_message_id"], alices),  # a user message
        (first["conversation_id"], str(uuid.uuid4()), alices),  # no such message
    ]
    for conversation_id, message_id, socket in cases:
        await socket.regenerate(conversation_id, message_id)
        refusal = await socket.receive_type("chat.error")
        assert refusal["code"] == "not_found", (message_id, refusal)
    assert await db_call(rows)() == before


async def test_edit_and_resend_makes_a_version_and_the_old_branch_leaves_the_prompt(
    ws, alice, persona, fast_demo
):
    socket = await ws(alice)
    one, _ = await turn(socket, "My cat is called Pumpernickel")
    conversation_id = one["conversation_id"]
    two, _ = await turn(socket, "What is my cat called?", conversation_id=conversation_id)

    # Edit the second message: its version follows the same reply.
    edited, _ = await turn(
        socket,
        "What colour is the sky?",
        conversation_id=conversation_id,
        parent_id=one["message_id"],
    )
    assert edited["parent_id"] == one["message_id"]
    texts = await db_call(path_texts)(conversation_id)
    assert "What is my cat called?" not in texts
    assert texts[:3] == ["My cat is called Pumpernickel", texts[1], "What colour is the sky?"]

    # Edit the first message: a new first message (parent null); nothing of the old branch.
    root, _ = await turn(socket, "Hello again", conversation_id=conversation_id, parent_id=None)
    assert root["parent_id"] is None
    texts = await db_call(path_texts)(conversation_id)
    assert texts[0] == "Hello again" and len(texts) == 2
    assert not any("Pumpernickel" in t for t in texts)
    firsts = await db_call(
        lambda: list(Message.objects.filter(parent=None).values_list("content", flat=True))
    )()
    assert sorted(firsts) == ["Hello again", "My cat is called Pumpernickel"]
    assert two["user_message_id"] != edited["user_message_id"]


async def test_a_parent_that_is_no_reply_of_this_conversation_saves_nothing(
    ws, alice, persona, fast_demo
):
    socket = await ws(alice)
    one, _ = await turn(socket, "First chat")
    other, _ = await turn(socket, "Second chat")
    before = await db_call(rows)()
    bad_parents = [one["user_message_id"], other["message_id"], str(uuid.uuid4()), "not-a-uuid"]
    for parent in bad_parents:
        await socket.send_message("x", conversation_id=one["conversation_id"], parent_id=parent)
        refusal = await socket.receive_type("chat.error")
        assert refusal["code"] == ("invalid" if parent == "not-a-uuid" else "not_found")
    # A new conversation has no reply to follow.
    await socket.send_message("x", parent_id=one["message_id"])
    assert (await socket.receive_type("chat.error"))["code"] == "not_found"
    assert await db_call(rows)() == before


async def test_a_reply_saved_after_the_user_switched_versions_leaves_the_choice(
    ws, alice, persona, settings
):
    settings.DEMO_TOKEN_DELAY_MS = 20
    settings.DEMO_REPLY_WORDS = 40
    socket = await ws(alice)
    one, _ = await turn(socket, "Hello")
    await socket.regenerate(one["conversation_id"], one["message_id"])
    await socket.receive_type("chat.delta")
    # Meanwhile the user goes back to the first version (the page PATCHes current_leaf_id).
    await db_call(Conversation.objects.filter(id=one["conversation_id"]).update)(
        current_leaf_id=one["message_id"]
    )
    done = await socket.receive_type("chat.done")
    assert done["status"] == "complete"
    assert await db_call(leaf_of)(one["conversation_id"]) == one["message_id"]


async def test_a_second_tab_sees_a_regenerate_live(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 5
    settings.DEMO_REPLY_WORDS = 30
    tab = await ws(alice)
    other = await ws(alice)
    one, _ = await turn(tab, "Hello")
    await other.receive_until("chat.done")  # it followed the first reply too
    await tab.regenerate(one["conversation_id"], one["message_id"])
    frames = await other.receive_until("chat.done")
    accepted = frames[0]
    assert accepted["type"] == "chat.accepted" and accepted["regenerate"] is True
    assert accepted["user_message_id"] == one["user_message_id"]
    text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    assert text == frames[-1]["content"]


async def test_two_regenerates_at_once_make_one_version_both_tabs_follow(
    ws, alice, persona, settings
):
    settings.DEMO_TOKEN_DELAY_MS = 5
    settings.DEMO_REPLY_WORDS = 30
    one_tab, other_tab = await ws(alice), await ws(alice)
    first, _ = await turn(one_tab, "Hello")
    await other_tab.receive_until("chat.done")
    for tab in (one_tab, other_tab):
        await tab.regenerate(first["conversation_id"], first["message_id"])
    refusals, done = [], []
    for tab in (one_tab, other_tab):
        frames = await tab.receive_until("chat.done", timeout=10)
        refusals += [f["code"] for f in frames if f["type"] == "chat.error"]
        done.append(frames[-1]["message_id"])
    # One request was refused, and its tab follows the version the other one started.
    assert refusals == ["busy"]
    assert done[0] == done[1] != first["message_id"]
    assert await db_call(Message.objects.filter(role="assistant").count)() == 2


async def test_a_regenerate_may_not_reuse_a_sent_message_s_client_id(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    first, _ = await turn(socket, "Hello")
    before = await db_call(rows)()
    await socket.regenerate(
        first["conversation_id"], first["message_id"], client_id=first["client_id"]
    )
    refusal = await socket.receive_type("chat.error")
    assert refusal["code"] == "invalid"
    assert await db_call(rows)() == before
