"""The Redis channel layer, made to ride out Redis outages and to end when it is cancelled.

Named in `CHANNEL_LAYERS["default"]["BACKEND"]` when `REDIS_URL` is set; callers never know.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.core import RedisChannelLayer
from django.conf import settings

from conversations.replies import replylog


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
