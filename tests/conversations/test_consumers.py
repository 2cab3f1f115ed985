"""The chat protocol over a real WebSocket stack, against the real database."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import weakref

import pytest
from asgiref.sync import sync_to_async

from conversations.db import db_call
from conversations.models import Conversation, Message

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def rows(conversation_id: str) -> list[tuple[str, str, str]]:
    return list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("created_at")
        .values_list("role", "status", "content")
    )


async def test_happy_path_streams_and_saves_once(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    client_id = await socket.send_message("How do I learn Django quickly?")

    frames = await socket.receive_until("chat.done")

    accepted, done = frames[0], frames[-1]
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [f["type"] for f in frames if f not in deltas] == [
        "chat.accepted",
        "conversation.updated",
        "chat.done",
    ]
    assert accepted["client_id"] == client_id
    assert accepted["persona"] == "assistant"
    assert accepted["title"] == "How do I learn Django quickly?"
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert {d["message_id"] for d in deltas} == {accepted["message_id"]}
    text = "".join(d["text"] for d in deltas)
    assert done["status"] == "complete"
    assert done["content"] == text
    assert len(text.split()) == 30
    assert text.startswith("Hello Alice!")
    assert done["usage"]["output_tokens"] == 30
    assert done["error"] is None

    saved = await db_call(rows)(accepted["conversation_id"])
    assert saved == [
        ("user", "complete", "How do I learn Django quickly?"),
        ("assistant", "complete", text),
    ]
    reply = await db_call(Message.objects.get)(id=accepted["message_id"])
    assert str(reply.parent_id) == accepted["user_message_id"]


async def test_conversation_continues_with_history(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    await socket.send_message("First question")
    first = await socket.receive_until("chat.done")
    conversation_id = first[0]["conversation_id"]

    await socket.send_message("Second question", conversation_id=conversation_id)
    second = await socket.receive_until("chat.done")

    assert second[0]["conversation_id"] == conversation_id
    assert 'You asked: "Second question"' in second[-1]["content"]
    saved = await db_call(rows)(conversation_id)
    assert [role for role, _, _ in saved] == ["user", "assistant", "user", "assistant"]


async def test_persona_is_chosen_for_a_new_conversation(ws, alice, persona, pirate, fast_demo):
    socket = await ws(alice)
    await socket.send_message("Ahoy?", persona="pirate")
    frames = await socket.receive_until("chat.done")
    assert frames[0]["persona"] == "pirate"
    assert "Captain Redbeard" in frames[-1]["content"]


async def test_stop_saves_partial_text_as_stopped(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 20
    settings.DEMO_REPLY_WORDS = 500
    socket = await ws(alice)
    await socket.send_message("Tell me a long story")
    accepted = await socket.receive()
    first_delta = await socket.receive()
    assert first_delta["type"] == "chat.delta"

    await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    frames = await socket.receive_until("chat.done")

    done = frames[-1]
    text = first_delta["text"] + "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    assert done["status"] == "stopped"
    assert done["content"] == text
    assert 0 < len(text.split()) < 500
    reply = await db_call(Message.objects.get)(id=accepted["message_id"])
    assert (reply.status, reply.content) == ("stopped", text)


async def test_disconnect_keeps_generating_and_resume_replays(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 120
    first = await ws(alice)
    await first.send_message("Keep going without me")
    accepted = await first.receive()
    seen = [await first.receive(), await first.receive()]
    await first.disconnect()

    second = await ws(alice)
    await second.send(
        {"type": "chat.resume", "conversation_id": accepted["conversation_id"], "after_seq": 2}
    )
    frames = await second.receive_until("chat.done")

    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [d["seq"] for d in deltas] == list(range(3, len(deltas) + 3))
    text = "".join(f["text"] for f in seen + deltas)
    done = frames[-1]
    assert done["status"] == "complete"
    assert done["content"] == text
    assert len(text.split()) == 120
    reply = await db_call(Message.objects.get)(id=accepted["message_id"])
    assert (reply.status, reply.content) == ("complete", text)


async def test_reply_is_saved_when_nobody_is_listening(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 5
    settings.DEMO_REPLY_WORDS = 60
    socket = await ws(alice)
    await socket.send_message("Answer even if I leave")
    accepted = await socket.receive()
    await socket.disconnect()

    from conversations.replies.registry import registry

    await asyncio.wait_for(asyncio.gather(*registry.tasks), 30)
    reply = await db_call(Message.objects.get)(id=accepted["message_id"])
    assert reply.status == "complete"
    assert len(reply.content.split()) == 60


async def test_provider_failure_keeps_partial_text_and_socket(ws, alice, persona, fast_demo):
    fast_demo.DEMO_FAIL_AFTER_WORDS = 7
    socket = await ws(alice)
    await socket.send_message("This will break")
    frames = await socket.receive_until("chat.done")

    done = frames[-1]
    text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    assert done["status"] == "error"
    assert "failed mid-reply" in done["error"]
    assert done["content"] == text
    assert len(text.split()) == 7
    reply = await db_call(Message.objects.get)(id=frames[0]["message_id"])
    assert (reply.status, reply.content) == ("error", text)
    assert "failed mid-reply" in reply.error

    fast_demo.DEMO_FAIL_AFTER_WORDS = None
    await socket.send_message("Still there?", conversation_id=frames[0]["conversation_id"])
    again = await socket.receive_until("chat.done")
    assert again[-1]["status"] == "complete"


async def test_resend_same_client_id_saves_no_second_message(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    client_id = await socket.send_message("Only once please")
    first = await socket.receive_until("chat.done")
    conversation_id = first[0]["conversation_id"]

    # The client never saw chat.accepted and re-sends, with or without the conversation id.
    for conversation in (None, conversation_id):
        await socket.send_message(
            "Only once please", conversation_id=conversation, client_id=client_id
        )
        again = await socket.receive_until("chat.done")
        assert again[0]["type"] == "chat.accepted"
        assert again[0]["message_id"] == first[0]["message_id"]
        assert again[-1]["content"] == first[-1]["content"]

    saved = await db_call(rows)(conversation_id)
    assert len(saved) == 2
    assert await db_call(Conversation.objects.count)() == 1


async def test_resend_while_streaming_attaches_to_the_same_reply(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 80
    socket = await ws(alice)
    client_id = await socket.send_message("Attach me")
    accepted = await socket.receive()
    await socket.receive()

    other = await ws(alice)
    await other.send_message(
        "Attach me", conversation_id=accepted["conversation_id"], client_id=client_id
    )
    frames = await other.receive_until("chat.done")

    assert frames[0]["message_id"] == accepted["message_id"]
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == frames[-1]["content"]
    count = await db_call(
        Message.objects.filter(conversation_id=accepted["conversation_id"]).count
    )()
    assert count == 2


async def test_second_tab_sees_the_title_of_a_new_conversation(ws, alice, persona, fast_demo):
    first = await ws(alice)
    second = await ws(alice)
    await first.send_message("Plan a trip to Lisbon")
    await first.receive_until("chat.done")

    update = await second.receive_type("conversation.updated")
    assert update["title"] == "Plan a trip to Lisbon"


async def test_resume_with_nothing_in_flight_is_idle(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    await socket.send_message("Quick one")
    frames = await socket.receive_until("chat.done")
    conversation_id = frames[0]["conversation_id"]

    await socket.send({"type": "chat.resume", "conversation_id": conversation_id, "after_seq": 0})
    assert await socket.receive() == {"type": "chat.idle", "conversation_id": conversation_id}
    await socket.send({"type": "chat.stop", "conversation_id": conversation_id})
    assert await socket.receive() == {"type": "chat.idle", "conversation_id": conversation_id}


async def test_a_socket_does_not_wait_for_the_shared_sync_thread(ws, alice, persona, fast_demo):
    """asgiref runs every thread-sensitive sync call made outside an HTTP request on one
    thread. A socket's handshake, frames and disconnect must not queue there behind whatever
    holds it: Channels' consumer took a turn on that thread before every message it handled,
    only to close connections this consumer never leaves open (db_call gives them back
    inside the call)."""
    from django.conf import settings

    if settings.DB_CALL_THREADS <= 0:
        pytest.skip("db_call itself runs on the shared thread without its own threads")
    busy = threading.Event()
    release = threading.Event()

    def hold_the_shared_thread() -> None:
        busy.set()
        release.wait(60)

    holder = asyncio.ensure_future(sync_to_async(hold_the_shared_thread)())
    try:
        async with asyncio.timeout(10):
            while not busy.is_set():
                await asyncio.sleep(0.01)
        socket = await ws(alice)
        await socket.send_message("Hello while something else holds the shared thread")
        frames = await socket.receive_until("chat.done")
        assert frames[-1]["status"] == "complete"
        # The page closes: the socket's consumer ends by itself, not cancelled by the
        # communicator after waiting its 1 s for it.
        await socket.communicator.disconnect()
        assert not socket.communicator.future.cancelled()
        assert not holder.done()  # all of it went through while the thread was still held
    finally:
        release.set()
        await holder


async def test_a_closed_socket_is_freed_without_the_cycle_collector(ws, alice):
    """The worker runs the cycle collector rarely (chatproject/asgi.py), so a closed socket's
    consumer, outbox and writer task must not hold each other in a cycle: each closed socket's
    memory would wait for the next full collection (40 objects a socket, with its buffers)."""
    from conversations.replies.registry import registry

    before = set(registry.sockets)
    socket = await ws(alice)
    (consumer,) = set(registry.sockets) - before
    gone = weakref.ref(consumer)
    del consumer
    gc.disable()
    try:
        await socket.communicator.disconnect()
        for _ in range(10):  # the writer task's cancellation takes a loop pass or two
            await asyncio.sleep(0)
        assert gone() is None
    finally:
        gc.enable()


async def test_a_closed_socket_leaves_its_replies_and_only_those(ws, alice, bob, persona, settings):
    """Closing a socket unfollows the replies it followed (its own, and another tab's it
    was shown), found through the socket itself rather than a scan of the worker's replies;
    the user's other tab and other users go on receiving theirs to the end."""
    import uuid

    from conversations.replies.registry import registry

    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 80
    before = set(registry.sockets)
    closing = await ws(alice)
    (closing_consumer,) = set(registry.sockets) - before
    other_tab = await ws(alice)
    someone_else = await ws(bob)
    await closing.send_message("Alice's long answer")
    accepted = await closing.receive()
    # The other tab is told of the reply (chat.started) and follows it too.
    assert (await other_tab.receive())["type"] == "chat.accepted"
    await someone_else.send_message("Bob's own answer")
    bobs = await someone_else.receive()
    alices = registry.get(uuid.UUID(accepted["conversation_id"]))
    bobs_generation = registry.get(uuid.UUID(bobs["conversation_id"]))
    assert alices is not None and bobs_generation is not None
    assert set(closing_consumer.following) == {alices}
    assert len(alices.followers) == 2

    await closing.disconnect()

    assert closing_consumer.channel_name not in alices.followers
    assert len(alices.followers) == 1, "the other tab still follows"
    assert len(bobs_generation.followers) == 1
    for socket in (other_tab, someone_else):
        done = (await socket.receive_until("chat.done"))[-1]
        assert done["status"] == "complete"


def heard_once(frames: list[dict], client_id: str) -> dict:
    """A socket's frames for one reply: its chat.accepted once, every delta once in order,
    and a chat.done whose content is their text. The chat.accepted."""
    accepted = [f for f in frames if f["type"] == "chat.accepted"]
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [a["client_id"] for a in accepted] == [client_id]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)), "each delta once"
    assert frames[-1]["status"] == "complete"
    assert frames[-1]["content"] == "".join(d["text"] for d in deltas)
    return accepted[0]


async def test_a_resend_while_the_first_send_begins_waits_for_it(ws, alice, persona, settings):
    """The page re-sends an unanswered message on its new socket while the first send of
    it still waits to begin (the database slow): the re-send takes no second place (at
    the user's limit that was a `busy`, and the page gave the text back as refused though
    it was saved) and gets the reply of the first, once, whole."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from conversations.replies.registry import registry
    from tests.conftest import admin_dsn

    settings.MAX_GENERATIONS_PER_USER = 1
    settings.DEMO_TOKEN_DELAY_MS = 1
    settings.DEMO_REPLY_WORDS = 20
    lost, new = await ws(alice), await ws(alice)
    dsn = make_conninfo(admin_dsn(), dbname=settings.DATABASES["default"]["NAME"])
    async with await psycopg.AsyncConnection.connect(dsn) as lock:
        # Holds back every insert of a message, so the first send's begin waits.
        await lock.execute("LOCK TABLE conversations_message IN EXCLUSIVE MODE")
        client_id = await lost.send_message("Are you there?")
        async with asyncio.timeout(10):
            while not registry.reservations:
                await asyncio.sleep(0.01)
        await new.send(
            {
                "type": "chat.send",
                "conversation_id": None,
                "persona": None,
                "content": "Are you there?",
                "client_id": client_id,
            }
        )
        assert await new.nothing_pending(0.5), "the re-send is not refused meanwhile"
        await lock.rollback()

    frames = await new.receive_until("chat.done")
    accepted = heard_once(frames, client_id)
    saved = await db_call(rows)(accepted["conversation_id"])
    assert [role for role, _, _ in saved] == ["user", "assistant"]


async def test_a_tab_that_follows_a_reply_and_sends_it_again_hears_it_once(
    ws, alice, persona, settings
):
    """Another tab is told of the reply (chat.started) and follows it; then, its socket
    back, it re-sends the message it had not seen accepted itself. Its chat.accepted and
    every delta come once, as when the re-send arrives first; a client that joins the text
    as it comes shows the reply as saved."""
    settings.DEMO_TOKEN_DELAY_MS = 10
    settings.DEMO_REPLY_WORDS = 40
    first, other = await ws(alice), await ws(alice)
    client_id = await first.send_message("Hello from one tab")
    frames = [await other.receive()]
    assert frames[0]["type"] == "chat.accepted"
    frames.append(await other.receive_type("chat.delta"))

    await other.send(
        {
            "type": "chat.send",
            "conversation_id": None,
            "persona": None,
            "content": "Hello from one tab",
            "client_id": client_id,
        }
    )
    frames += await other.receive_until("chat.done")

    heard_once(frames, client_id)


async def test_a_stop_before_the_first_word_saves_an_empty_stopped_reply(
    ws, alice, persona, settings
):
    # The model's stream is pulled from the moment the reply starts, before the reply's own
    # task has run: a stop that comes first still ends it, with nothing streamed.
    settings.DEMO_TOKEN_DELAY_MS = 1000
    settings.DEMO_REPLY_WORDS = 50
    socket = await ws(alice)
    await socket.send_message("Take your time")
    accepted = await socket.receive()
    await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})

    frames = await socket.receive_until("chat.done", timeout=5)

    assert [f["type"] for f in frames if f["type"] != "conversation.updated"] == ["chat.done"]
    assert (frames[-1]["status"], frames[-1]["content"]) == ("stopped", "")
    reply = await db_call(Message.objects.get)(id=accepted["message_id"])
    assert (reply.status, reply.content) == ("stopped", "")


async def test_a_reply_cancelled_as_it_starts_stops_pulling_from_the_model(
    ws, alice, persona, settings, monkeypatch
):
    # A shutdown in the very pass a reply starts cancels its task before its first step, so
    # none of its own cleanup runs: the model's stream must still stop (a remote model would
    # go on streaming, and billing, to nobody).
    from conversations.replies.generation import Generation

    settings.DEMO_TOKEN_DELAY_MS = 50
    settings.DEMO_REPLY_WORDS = 100
    started: list[Generation] = []
    start = Generation.start

    def start_then_cancel(generation: Generation) -> asyncio.Task[None]:
        task = start(generation)
        task.cancel()
        started.append(generation)
        return task

    monkeypatch.setattr(Generation, "start", start_then_cancel)
    socket = await ws(alice)
    await socket.send_message("Hello")
    await socket.receive()
    [generation] = started
    assert generation.task is not None
    with contextlib.suppress(asyncio.CancelledError):
        await generation.task
    producer = generation._producer
    assert producer is not None
    await asyncio.wait([producer], timeout=1)  # its 100 words would take 5 s

    assert producer.cancelled()
    assert generation._model is not None
    assert generation._model.buffer == []
