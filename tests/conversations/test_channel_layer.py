"""The channel layer a single process ships with: Channels' in-memory layer, whose scan for
expired messages runs once a second instead of on every call (O(N) each, O(N²) for a burst)."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer

from conversations.replies.layer import LocalChannelLayer

pytestmark = pytest.mark.asyncio


@pytest.fixture
def scans(monkeypatch):
    """How many times the stock scan over every channel and group ran."""
    count = [0]
    stock = InMemoryChannelLayer._clean_expired

    def counted(self):
        count[0] += 1
        return stock(self)

    monkeypatch.setattr(InMemoryChannelLayer, "_clean_expired", counted)
    return count


async def test_a_burst_of_starts_does_not_scan_every_socket_each_time(scans):
    layer = get_channel_layer()  # what settings ship without REDIS_URL
    sockets = 300
    channels = [await layer.new_channel() for _ in range(sockets)]
    for index, channel in enumerate(channels):
        await layer.group_add(f"user-{index}", channel)
    began, since = scans[0], time.monotonic()
    # Every socket starts a reply (a group_send to its user) and takes the copy.
    for index, channel in enumerate(channels):
        await layer.group_send(f"user-{index}", {"type": "chat.started", "n": index})
        message = await layer.receive(channel)
        assert message == {"type": "chat.started", "n": index}
    seconds = time.monotonic() - since
    # The stock layer scanned all 300 channels 600 times (once per call); this one once a
    # second at most.
    assert scans[0] - began <= 2 + int(seconds / layer.scan_every)


async def test_messages_and_memberships_still_expire():
    layer = LocalChannelLayer(expiry=0.2, scan_every=0.1)
    stale, fresh = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("user-1", stale)
    await layer.group_add("user-1", fresh)
    await layer.send(stale, {"type": "never.read"})  # its socket is gone: nobody receives
    await asyncio.sleep(0.35)
    # The next call after the scan's interval drops the expired message, and with it the
    # channel from its groups, as the stock layer does.
    await layer.group_send("user-1", {"type": "chat.started"})
    assert stale not in layer.groups.get("user-1", {})
    assert await layer.receive(fresh) == {"type": "chat.started"}


async def test_a_full_channel_is_still_refused():
    from channels.exceptions import ChannelFull

    layer = LocalChannelLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "a"})
    await layer.send(channel, {"type": "b"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "c"})


async def test_a_group_send_reaches_every_member_past_a_full_one():
    from channels.exceptions import ChannelFull

    layer = LocalChannelLayer(capacity=1)
    full, first, last = [await layer.new_channel() for _ in range(3)]
    for channel in (first, full, last):
        await layer.group_add("user-1", channel)
    await layer.send(full, {"type": "unread"})
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "refused"})

    await layer.group_send("user-1", {"type": "chat.started"})

    assert await layer.receive(first) == {"type": "chat.started"}
    assert await layer.receive(last) == {"type": "chat.started"}
    assert await layer.receive(full) == {"type": "unread"}  # the send to it was skipped


async def test_a_lone_socket_has_nobody_to_tell():
    layer = LocalChannelLayer()
    mine, other = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("user-1", mine)
    assert layer.alone("user-1", mine)
    await layer.group_add("user-1", other)
    assert not layer.alone("user-1", mine)
    await layer.group_discard("user-1", other)
    assert layer.alone("user-1", mine)
