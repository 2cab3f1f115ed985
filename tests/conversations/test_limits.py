"""Limits answer with their protocol codes, and refused requests save nothing."""

from __future__ import annotations

import pytest

from conversations.db import db_call
from conversations.models import Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_messages_per_minute_is_rate_limited_with_retry_after(
    ws, alice, persona, fast_demo, one_rate_window
):
    fast_demo.MESSAGES_PER_MINUTE = 3
    socket = await ws(alice)
    for i in range(3):
        await socket.send_message(f"Message {i}")
        await socket.receive_type("chat.done")

    client_id = await socket.send_message("One too many")
    error = await socket.receive()

    assert (error["type"], error["code"], error["client_id"]) == (
        "chat.error",
        "rate_limited",
        client_id,
    )
    assert 0 < error["retry_after"] <= 60
    contents = await db_call(
        lambda: list(Message.objects.filter(role="user").values_list("content", flat=True))
    )()
    assert "One too many" not in contents
    assert len(contents) == 3


async def test_rate_limit_is_per_user(ws, alice, bob, persona, fast_demo, one_rate_window):
    fast_demo.MESSAGES_PER_MINUTE = 1
    first, second = await ws(alice), await ws(bob)
    await first.send_message("Alice's only message")
    await first.receive_type("chat.done")
    await second.send_message("Bob is not limited by Alice")
    assert (await second.receive_type("chat.done"))["status"] == "complete"


# What counts is the message's characters, however the frame spells them: json.dumps (used
# by `send_message`) escapes "é" as \u00e9 and an emoji as a surrogate pair, 6 and 12 bytes.
@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        pytest.param("é" * 12_000, True, id="12000-e-acute"),
        pytest.param("é" * 16_000, True, id="16000-e-acute"),
        pytest.param("😀" * 16_000, True, id="16000-emoji"),
        pytest.param("é" * 16_001, False, id="16001-e-acute"),
        pytest.param("😀" * 16_001, False, id="16001-emoji"),
    ],
)
async def test_the_limit_counts_characters_not_escaped_bytes(
    ws, alice, persona, fast_demo, text, accepted
):
    socket = await ws(alice)
    client_id = await socket.send_message(text)

    if accepted:
        assert (await socket.receive_type("chat.done"))["status"] == "complete"
        saved = await db_call(Message.objects.get)(role="user")
        assert saved.content == text
    else:
        error = await socket.receive()
        assert (error["type"], error["code"], error["client_id"]) == (
            "chat.error",
            "too_large",
            client_id,
        )
        assert not await db_call(Message.objects.exists)()
