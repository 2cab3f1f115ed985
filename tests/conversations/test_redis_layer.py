"""With the Redis channel layer, a user's other sockets hear about their conversations."""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_turn_streams_and_new_title_fans_out_through_redis(
    ws, alice, bob, persona, fast_demo, redis_layer
):
    layer = get_channel_layer()
    assert type(layer).__name__ == "ResilientRedisChannelLayer"
    first = await ws(alice)
    other_tab = await ws(alice)
    stranger = await ws(bob)

    await first.send_message("Compare Redis and PostgreSQL")
    frames = await first.receive_until("chat.done")
    assert frames[-1]["status"] == "complete"

    update = await other_tab.receive_type("conversation.updated")
    assert update == {
        "type": "conversation.updated",
        "conversation_id": frames[0]["conversation_id"],
        "title": "Compare Redis and PostgreSQL",
    }
    assert await stranger.nothing_pending(0.5)
