"""Following a reply looks the same wherever it runs: each test runs the reply on worker A
and follows it from A itself (a local Generation) or from B (a RemoteReply, through the
reply log in Redis). Same frames, same outcome."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from conversations.db import db_call
from conversations.models import Conversation, Message
from tests.conftest import session_cookie
from tests.workers.conftest import Client, deltas_text, open_with_cookie
from tests.workers.test_hardening import post_message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLOW = {"DEMO_TOKEN_DELAY_MS": "30", "DEMO_REPLY_WORDS": "80"}


@pytest.fixture(params=["local", "remote"])
def follow_from(request):
    return request.param


async def setup(spawn, alice, follow_from: str) -> tuple[Client, Client, str, Any]:
    """A talking tab on A, and a follower's tab on A (local) or B (remote)."""
    a = spawn("A", **SLOW)
    b = spawn("B", **SLOW) if follow_from == "remote" else a
    cookie = await db_call(session_cookie)(alice)
    talker = await open_with_cookie(a, cookie)
    follower = await open_with_cookie(b, cookie)
    return talker, follower, cookie, b


async def start_reply(talker: Client) -> dict[str, Any]:
    await talker.send_message("Tell me a story")
    accepted = (await talker.until("chat.accepted"))[-1]
    await talker.until("chat.delta", seq=3)
    return accepted


def frames_of(frames: list[dict[str, Any]], conversation_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("conversation_id") == conversation_id]


async def test_resume_replays_after_the_cursor_then_follows(spawn, alice, persona, follow_from):
    talker, follower, _, _ = await setup(spawn, alice, follow_from)
    accepted = await start_reply(talker)
    conversation_id = accepted["conversation_id"]
    # The follower's tab heard of the reply (multi-tab); a reload resumes from seq 2.
    await follower.until("chat.accepted")
    await follower.send({"type": "chat.resume", "conversation_id": conversation_id, "after_seq": 2})
    frames = frames_of(await follower.until("chat.done"), conversation_id)
    done = frames[-1]
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    # The multi-tab stream from seq 1 gave way to the resume's, from seq 3: from its start,
    # every seq arrives in order, and with the first two texts they are the saved reply.
    restart = max(i for i, f in enumerate(deltas) if f["seq"] == 3)
    resumed = deltas[restart:]
    assert [f["seq"] for f in resumed] == list(range(3, 3 + len(resumed)))
    assert done["status"] == "complete"
    first_two = {f["seq"]: f["text"] for f in deltas if f["seq"] <= 2}
    assert first_two[1] + first_two[2] + deltas_text(resumed) == done["content"]
    assert len([f for f in frames if f["type"] == "chat.done"]) == 1


async def test_the_other_tab_sees_the_whole_reply(spawn, alice, persona, follow_from):
    talker, follower, _, _ = await setup(spawn, alice, follow_from)
    accepted = await start_reply(talker)
    conversation_id = accepted["conversation_id"]
    frames = frames_of(await follower.until("chat.done"), conversation_id)
    assert frames[0]["type"] == "chat.accepted"
    assert frames[0]["content"] == "Tell me a story"
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))
    assert deltas_text(deltas) == frames[-1]["content"]


async def test_stop_from_a_tab_that_was_not_following(spawn, alice, persona, follow_from):
    talker, _, cookie, b = await setup(spawn, alice, follow_from)
    accepted = await start_reply(talker)
    conversation_id = accepted["conversation_id"]
    stopper = await open_with_cookie(b, cookie)  # opened after the reply began
    await stopper.send({"type": "chat.stop", "conversation_id": conversation_id})
    frames = frames_of(await stopper.until("chat.done"), conversation_id)
    # Only the end: the stopping tab did not ask for the text, chat.done carries it all.
    assert [f["type"] for f in frames] == ["chat.done"]
    assert frames[0]["status"] == "stopped"
    talked = (await talker.until("chat.done"))[-1]
    assert talked["content"] == frames[0]["content"]


async def test_stop_after_the_reply_ended_is_idle(spawn, alice, persona, follow_from):
    talker, follower, _, _ = await setup(spawn, alice, follow_from)
    accepted = await start_reply(talker)
    conversation_id = accepted["conversation_id"]
    await talker.until("chat.done")
    await follower.until("chat.done")
    for command in ("chat.stop", "chat.resume"):
        await follower.send({"type": command, "conversation_id": conversation_id, "after_seq": 0})
        frame = (await follower.until("chat.idle"))[-1]
        assert frame["conversation_id"] == conversation_id


async def test_an_http_repost_waits_for_the_reply_wherever_it_runs(
    spawn, alice, persona, follow_from
):
    talker, _, cookie, b = await setup(spawn, alice, follow_from)
    client_id = str(uuid.uuid4())
    made = await db_call(
        lambda: str(Conversation.objects.create(owner=alice, persona=persona).id)
    )()
    await talker.send(
        {
            "type": "chat.send",
            "conversation_id": made,
            "persona": None,
            "content": "Sent on a socket, re-posted over HTTP",
            "client_id": client_id,
        }
    )
    await talker.until("chat.delta", seq=2)
    body = f'{{"content": "Sent on a socket, re-posted over HTTP", "client_id": "{client_id}"}}'
    status = await asyncio.to_thread(post_message, b, cookie, made, body.encode())
    done = (await talker.until("chat.done"))[-1]
    assert status == 201
    saved = await db_call(
        lambda: list(
            Message.objects.filter(conversation_id=made, role="assistant").values_list(
                "status", "content"
            )
        )
    )()
    assert saved == [("complete", done["content"])]
