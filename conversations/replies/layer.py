"""The channel layers `CHANNEL_LAYERS["default"]["BACKEND"]` names; callers never know which.

- `LocalChannelLayer` (no `REDIS_URL`, one process): Channels' in-memory layer, with its
  expiry scan run once a second instead of on every call.
- `ResilientRedisChannelLayer` (`REDIS_URL` set, many workers): made to ride out Redis
  outages and to end when it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from conversations.replies import replylog


class LocalChannelLayer(InMemoryChannelLayer):
    """Channels' in-memory layer, whose scan for expired messages and memberships runs at
    most once every `scan_every` seconds.

    The stock layer scans every channel and every group on each `receive()` and
    `group_send()`. Every socket waits in `receive()`, and every reply start is a
    `group_send()`, so with N sockets open, a burst of N starts costs O(N²). Under a burst of
    250, `make bench`'s profile at e5f9671 found 13.5% of the event loop there.

    What the scan removes can go a second late: messages past `expiry` (60 s) and group
    memberships past `group_expiry` (a day). A receiver takes its messages as they come,
    expired or not, exactly as before.
    """

    def __init__(self, scan_every: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scan_every = scan_every
        self._next_scan = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + self.scan_every
        super()._clean_expired()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Channels' own, less a task and an `as_completed` per member: this layer's `send`
        never waits, so each runs to its end in turn. A full channel is skipped, as there."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)

    def alone(self, group: str, channel: str) -> bool:
        """Whether `channel` is the group's only member: in one process, nobody else to tell."""
        return set(self.groups.get(group, ())) <= {channel}


class ResilientRedisChannelLayer(RedisChannelLayer):
    async def receive(self, channel: str) -> Any:
        """Wait out a Redis outage instead of raising: Channels awaits the layer beside the
        socket, and an error here would close a socket whose own reply needs no Redis."""
        while True:
            inner = asyncio.ensure_future(super().receive(channel))
            try:
                return await asyncio.shield(inner)
            except asyncio.CancelledError:
                # The socket closed. channels-redis's blocking pop can swallow a cancel that
                # lands as its read times out (asyncio.timeout on Python 3.11), then pops on
                # forever: the socket's task never ended and held the server's shutdown open.
                # Return at once, and keep cancelling the pop until it has really stopped.
                reaper = asyncio.get_running_loop().create_task(_cancel_until_done(inner))
                _reapers.add(reaper)
                reaper.add_done_callback(_reapers.discard)
                raise
            except Exception as exc:
                replylog.mark_down(exc)
                await asyncio.sleep(settings.REDIS_RETRY_SECONDS)


_reapers: set[asyncio.Task[None]] = set()


async def _cancel_until_done(task: asyncio.Future[Any], every: float = 0.1) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
