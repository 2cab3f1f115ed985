"""Two workers, A and B, sharing PostgreSQL and Redis: a reply survives its worker."""

from __future__ import annotations

import asyncio

import pytest

from conversations.db import db_call
from conversations.models import Message
from tests.workers.conftest import deltas_text, open_client

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]


def saved(message_id: str) -> tuple[str, str] | None:
    row = Message.objects.filter(id=message_id).values_list("status", "content").first()
    return tuple(row) if row else None  # type: ignore[return-value]


def assistant_rows(conversation_id: str) -> int:
    return Message.objects.filter(conversation_id=conversation_id, role="assistant").count()


async def wait_saved(message_id: str, timeout: float = 20) -> tuple[str, str]:
    async with asyncio.timeout(timeout):
        while (row := await db_call(saved)(message_id)) is None:
            await asyncio.sleep(0.1)
    return row


async def test_resume_on_another_worker_replays_and_follows(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    on_a = await open_client(a, alice)
    await on_a.send_message("Tell me about resilience")
    accepted = await on_a.receive()
    first = [await on_a.receive() for _ in range(3)]
    assert [f["seq"] for f in first] == [1, 2, 3]

    on_b = await open_client(b, alice)
    await on_b.send(
        {"type": "chat.resume", "conversation_id": accepted["conversation_id"], "after_seq": 1}
    )
    from_b = await on_b.until("chat.done")
    from_a = first + await on_a.until("chat.done")

    seqs = [f["seq"] for f in from_b if f["type"] == "chat.delta"]
    assert seqs == list(range(2, len(seqs) + 2)), "no gap, no duplicate"
    text_a = deltas_text(from_a)
    assert first[0]["text"] + deltas_text(from_b) == text_a
    assert from_b[-1]["status"] == "complete"
    assert from_b[-1]["content"] == text_a
    assert await wait_saved(accepted["message_id"]) == ("complete", text_a)
    for client in (on_a, on_b):
        await client.close()


async def test_stop_on_another_worker_stops_the_generation(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    on_a = await open_client(a, alice)
    await on_a.send_message("A long story, please")
    accepted = await on_a.receive()
    await on_a.receive()

    on_b = await open_client(b, alice)
    await on_b.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    done_b = (await on_b.until("chat.done"))[-1]
    frames_a = await on_a.until("chat.done")

    assert done_b["status"] == "stopped"
    assert frames_a[-1]["status"] == "stopped"
    assert frames_a[-1]["content"] == done_b["content"]
    assert 0 < len(done_b["content"].split()) < 100
    assert await wait_saved(accepted["message_id"]) == ("stopped", done_b["content"])
    for client in (on_a, on_b):
        await client.close()


async def test_second_tab_on_another_worker_sees_the_live_reply(spawn, alice, bob, persona):
    a, b = spawn("A"), spawn("B")
    tab_b = await open_client(b, alice)
    stranger = await open_client(b, bob)
    tab_a = await open_client(a, alice)
    await tab_a.send_message("Sync my tabs")
    frames_a = await tab_a.until("chat.done")
    accepted = frames_a[0]

    frames_b = await tab_b.until("chat.done")

    assert frames_b[0]["type"] == "chat.accepted"
    assert frames_b[0]["message_id"] == accepted["message_id"]
    assert deltas_text(frames_b) == deltas_text(frames_a) == frames_b[-1]["content"]
    with pytest.raises(TimeoutError):
        await stranger.receive(timeout=0.5)
    for client in (tab_a, tab_b, stranger):
        await client.close()


async def test_killed_worker_reply_is_saved_interrupted_by_the_survivor(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    on_a = await open_client(a, alice)
    await on_a.send_message("Survive a crash")
    accepted = await on_a.receive()
    seen = [await on_a.receive() for _ in range(4)]
    on_b = await open_client(b, alice)
    await on_b.send(
        {"type": "chat.resume", "conversation_id": accepted["conversation_id"], "after_seq": 0}
    )
    await on_b.until("chat.delta")

    a.kill()
    frames_b = await on_b.until("chat.done", timeout=30)

    done = frames_b[-1]
    assert done["status"] == "interrupted"
    assert done["content"].startswith(deltas_text(seen))
    assert 0 < len(done["content"].split()) < 100
    assert await wait_saved(accepted["message_id"]) == ("interrupted", done["content"])
    assert await db_call(assistant_rows)(accepted["conversation_id"]) == 1
    await on_b.close()


async def test_recover_streams_saves_a_dead_workers_reply(
    spawn, alice, persona, settings, redis_url
):
    from io import StringIO

    from django.core.management import call_command

    a = spawn("A")
    on_a = await open_client(a, alice)
    await on_a.send_message("Nobody is left to save me")
    accepted = await on_a.receive()
    seen = [await on_a.receive() for _ in range(3)]
    a.kill()
    await asyncio.sleep(2.5)  # past the heartbeat's lifetime

    settings.REDIS_URL = redis_url
    settings.HEARTBEAT_TTL = 2
    out = StringIO()
    await asyncio.to_thread(call_command, "recover_streams", stdout=out)

    status, content = await wait_saved(accepted["message_id"])
    assert status == "interrupted"
    assert content.startswith(deltas_text(seen))
    assert "recover_streams: recovered 1, failed 0" in out.getvalue()
    again = StringIO()
    await asyncio.to_thread(call_command, "recover_streams", stdout=again)
    assert "recovered 0" in again.getvalue()
    assert await db_call(assistant_rows)(accepted["conversation_id"]) == 1


async def test_sigterm_drains_then_saves_the_rest_interrupted(
    spawn, alice, bob, persona, pg_backends
):
    from tests.conftest import settled

    baseline = sum(settled(pg_backends).values())
    a = spawn("A", DEMO_TOKEN_DELAY_MS="50", DEMO_REPLY_WORDS="60", GENERATION_DRAIN_SECONDS="2")
    short = await open_client(a, alice)
    await short.send_message("Almost done when the server stops")
    short_accepted = await short.receive()
    await asyncio.sleep(1.5)
    long = await open_client(a, bob)
    await long.send_message("Just started when the server stops")
    long_accepted = (await long.until("chat.accepted"))[-1]

    a.terminate()
    await asyncio.sleep(0.2)
    late = await short.send_message("A new turn during shutdown")
    refused = (await short.until("chat.error", client_id=late))[-1]
    short_done = (await short.until("chat.done"))[-1]
    long_done = (await long.until("chat.done"))[-1]
    await short.connection.wait_closed()

    assert refused["code"] == "busy"
    assert short_done["status"] == "complete"
    assert long_done["status"] == "interrupted"
    assert 0 < len(long_done["content"].split()) < 60
    assert short.connection.close_code == 4012
    assert await asyncio.to_thread(a.wait, 15) is not None
    assert await wait_saved(short_accepted["message_id"]) == ("complete", short_done["content"])
    assert await wait_saved(long_accepted["message_id"]) == (
        "interrupted",
        long_done["content"],
    )
    after = await asyncio.to_thread(settled, pg_backends)
    assert sum(after.values()) == baseline
    assert after.get("idle in transaction", 0) == 0


async def test_rate_limit_holds_across_workers(spawn, alice, persona, one_rate_window):
    a = spawn("A", MESSAGES_PER_MINUTE="3", DEMO_REPLY_WORDS="5", DEMO_TOKEN_DELAY_MS="1")
    b = spawn("B", MESSAGES_PER_MINUTE="3", DEMO_REPLY_WORDS="5", DEMO_TOKEN_DELAY_MS="1")
    on_a, on_b = await open_client(a, alice), await open_client(b, alice)
    for client in (on_a, on_b, on_a):
        await client.send_message("Counted wherever it lands")
        await client.until("chat.done", timeout=20)
    late = await on_b.send_message("The fourth this minute")
    refused = (await on_b.until("chat.error", client_id=late))[-1]
    assert refused["code"] == "rate_limited"
    assert refused["retry_after"] > 0
    for client in (on_a, on_b):
        await client.close()
