"""Every refusal has its code, saves nothing, and leaves the socket open."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings

from conversations.db import db_call
from conversations.llm.base import PUBLIC_CONFIGURATION_ERROR
from conversations.models import Conversation, Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


def send_frame(**overrides):
    frame = {
        "type": "chat.send",
        "conversation_id": None,
        "persona": None,
        "content": "hello",
        "client_id": str(uuid.uuid4()),
    }
    frame.update(overrides)
    return json.dumps({k: v for k, v in frame.items() if v is not ...})


BAD_FRAMES = [
    pytest.param("not json at all", "invalid", id="not-json"),
    pytest.param("[1, 2, 3]", "invalid", id="not-an-object"),
    pytest.param(json.dumps({"type": "chat.dance"}), "invalid", id="unknown-type"),
    pytest.param(json.dumps({"content": "hi"}), "invalid", id="no-type"),
    pytest.param(send_frame(client_id=...), "invalid", id="missing-client-id"),
    pytest.param(send_frame(content=...), "invalid", id="missing-content"),
    pytest.param(send_frame(client_id="not-a-uuid"), "invalid", id="non-uuid-client-id"),
    pytest.param(send_frame(conversation_id="12345"), "invalid", id="non-uuid-conversation"),
    pytest.param(send_frame(content="   \n "), "invalid", id="empty-content"),
    pytest.param(send_frame(content="\u200b\u200d\u2060"), "invalid", id="invisible-content"),
    pytest.param(send_frame(content=17), "invalid", id="content-not-string"),
    pytest.param(send_frame(content="x" * 16001), "too_large", id="over-long-content"),
    pytest.param(send_frame(persona="no-such-persona"), "not_found", id="unknown-persona"),
    pytest.param(send_frame(persona="x" * 50_000), "not_found", id="huge-unknown-persona"),
    pytest.param(
        send_frame(conversation_id=str(uuid.uuid4())), "not_found", id="unknown-conversation"
    ),
    pytest.param(
        json.dumps({"type": "chat.resume", "conversation_id": str(uuid.uuid4()), "after_seq": -1}),
        "invalid",
        id="negative-after-seq",
    ),
    # Text no column can hold: PostgreSQL refuses NUL; a lone surrogate is not UTF-8.
    pytest.param(send_frame(content="a\u0000b"), "invalid", id="nul-in-content"),
    pytest.param(send_frame(content="a\ud800b"), "invalid", id="lone-surrogate"),
    pytest.param(send_frame(persona="pi\u0000rate"), "invalid", id="nul-in-persona"),
    pytest.param("[" * 100_000 + "]" * 100_000, "too_large", id="huge-nesting"),
    pytest.param("[" * 5000 + "]" * 5000, "invalid", id="deep-nesting"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_FRAMES)
async def test_bad_frame_is_refused_and_saves_nothing(ws, alice, persona, fast_demo, raw, code):
    socket = await ws(alice)
    await socket.send_raw(raw)

    error = await socket.receive()

    assert error["type"] == "chat.error"
    assert error["code"] == code
    assert 0 < len(error["message"]) < 200  # what was sent is not echoed back whole
    assert await db_call(counts)() == (0, 0)
    # The socket stays open and usable.
    await socket.send_message("Still here?")
    frames = await socket.receive_until("chat.done")
    assert frames[-1]["status"] == "complete"


async def test_binary_frame_is_refused(ws, alice, persona):
    socket = await ws(alice)
    await socket.send_raw(data=b"\x00\x01")
    error = await socket.receive()
    assert (error["type"], error["code"]) == ("chat.error", "invalid")


async def test_error_names_the_request_it_refuses(ws, alice, persona):
    socket = await ws(alice)
    client_id = str(uuid.uuid4())
    await socket.send_raw(send_frame(client_id=client_id, content=""))
    error = await socket.receive()
    assert error["client_id"] == client_id


async def test_message_at_the_limit_is_accepted(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    content = "y" * settings.MAX_MESSAGE_CHARS
    await socket.send_message(content)
    frames = await socket.receive_until("chat.done")
    assert frames[-1]["status"] == "complete"
    saved = await db_call(Message.objects.get)(role="user")
    assert saved.content == content


async def test_foreign_conversation_is_not_found_for_every_command(
    ws, alice, bob, persona, fast_demo
):
    owner = await ws(alice)
    await owner.send_message("Alice's secret")
    frames = await owner.receive_until("chat.done")
    conversation_id = frames[0]["conversation_id"]

    intruder = await ws(bob)
    for frame in (
        {"type": "chat.resume", "conversation_id": conversation_id, "after_seq": 0},
        {"type": "chat.stop", "conversation_id": conversation_id},
        json.loads(send_frame(conversation_id=conversation_id)),
    ):
        await intruder.send(frame)
        error = await intruder.receive()
        assert (error["type"], error["code"]) == ("chat.error", "not_found")
    assert await db_call(counts)() == (1, 2)


async def test_foreign_stream_cannot_be_followed_or_stopped(ws, alice, bob, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 100
    owner = await ws(alice)
    await owner.send_message("Long private answer")
    accepted = await owner.receive()
    conversation_id = accepted["conversation_id"]

    intruder = await ws(bob)
    await intruder.send({"type": "chat.resume", "conversation_id": conversation_id})
    assert (await intruder.receive())["code"] == "not_found"
    await intruder.send({"type": "chat.stop", "conversation_id": conversation_id})
    assert (await intruder.receive())["code"] == "not_found"

    frames = await owner.receive_until("chat.done")
    assert frames[-1]["status"] == "complete"


async def test_second_send_while_streaming_is_busy(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 80
    socket = await ws(alice)
    await socket.send_message("First")
    accepted = await socket.receive()
    client_id = await socket.send_message("Second", conversation_id=accepted["conversation_id"])

    frames = await socket.receive_until("chat.done")

    errors = [f for f in frames if f["type"] == "chat.error"]
    assert len(errors) == 1
    assert errors[0]["code"] == "busy"
    assert errors[0]["client_id"] == client_id
    assert frames[-1]["status"] == "complete"
    saved = await db_call(
        lambda: list(Message.objects.values_list("content", flat=True).filter(role="user"))
    )()
    assert saved == ["First"]


async def test_too_many_generations_for_one_user_is_busy(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 60
    settings.MAX_GENERATIONS_PER_USER = 2
    socket = await ws(alice)
    for _ in range(2):
        await socket.send_message("One of many")
    client_id = await socket.send_message("One too many")

    error = None
    while error is None:
        frame = await socket.receive()
        if frame["type"] == "chat.error":
            error = frame
    assert (error["code"], error["client_id"]) == ("busy", client_id)
    assert await db_call(Conversation.objects.count)() == 2


async def test_a_user_at_the_limit_may_send_again_once_a_reply_ends(
    ws, alice, bob, persona, settings
):
    settings.DEMO_TOKEN_DELAY_MS = 5
    settings.DEMO_REPLY_WORDS = 20
    settings.MAX_GENERATIONS_PER_USER = 2
    socket, other = await ws(alice), await ws(bob)
    for round_ in range(3):
        # Each round fills the user's two places, and each reply's end frees its place.
        for n in range(2):
            await socket.send_message(f"Round {round_}, message {n}")
        await other.send_message(f"Bob's round {round_}")  # another user's count is his own
        done = 0
        while done < 2:
            frame = await socket.receive()
            assert frame["type"] != "chat.error", frame
            done += frame["type"] == "chat.done"
        while (await other.receive())["type"] != "chat.done":
            pass
    assert await db_call(Conversation.objects.count)() == 9  # 3 rounds of 2 + 1


async def test_misconfigured_provider_is_a_provider_error(ws, alice, persona, settings):
    settings.LLM_PROVIDER = "gemini"
    settings.GEMINI_API_KEY = ""
    socket = await ws(alice)
    await socket.send_message("Hello?")
    error = await socket.receive()
    assert (error["type"], error["code"]) == ("chat.error", "provider_error")
    # The user is told to ask an administrator; which setting is missing is for the log.
    assert error["message"] == PUBLIC_CONFIGURATION_ERROR
    assert await db_call(counts)() == (0, 0)


async def test_anonymous_handshake_is_refused(ws, persona):
    await ws(None, expect=False)


async def test_foreign_origin_is_refused(ws, alice):
    await ws(alice, origin=b"https://evil.example", expect=False)


async def test_same_origin_is_accepted(ws, alice):
    await ws(alice, origin=b"http://127.0.0.1:8000", host=b"127.0.0.1:8000")
