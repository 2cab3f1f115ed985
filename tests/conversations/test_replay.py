"""A resume replays a long reply at once: more than a socket's buffer bound, to a client
that reads it. That client must get it all, not be dropped for being slow."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_a_replay_larger_than_the_bound_reaches_a_reading_client(
    ws, alice, persona, settings
):
    settings.SOCKET_BUFFER_BYTES = 2048  # a few frames' worth
    settings.DEMO_TOKEN_DELAY_MS = 5
    settings.DEMO_REPLY_WORDS = 400
    settings.STREAM_COALESCE_MS = 5
    # Many frames, however busy the test process: no widening when it is short of CPU.
    settings.STREAM_COALESCE_MAX_MS = 5
    talker = await ws(alice)
    await talker.send_message("A long one")
    accepted = await talker.receive_type("chat.accepted")
    # Let many frames pile up in the reply before another tab resumes it from the start.
    while (await talker.receive_type("chat.delta"))["seq"] < 40:
        pass
    reader = await ws(alice)
    await reader.send(
        {"type": "chat.resume", "conversation_id": accepted["conversation_id"], "after_seq": 0}
    )
    frames = await reader.receive_until("chat.done")
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(f["text"] for f in deltas) == frames[-1]["content"]
    assert frames[-1]["status"] == "complete"
