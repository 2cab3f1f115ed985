"""One interface for every reply a socket may follow, wherever it runs.

A `Reply` is the local `Generation` (streaming in this process), a `RemoteReply` (streaming on
another worker, followed through its reply log in Redis) or a `SavedReply` (already in the
database). Callers get one from `find_reply()` or `turn_start()` and never ask which it is:
`follow(key, deliver, after_seq)` replays the deltas after `after_seq`, then live ones, then
`chat.done`; following again restarts from the new `after_seq`, except that `FINAL_ONLY` keeps a
follow already running. `stop()` asks for the reply to stop; `final()` waits for its last frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Protocol

from redis.exceptions import RedisError

from conversations.context import ReplyInfo
from conversations.errors import Unavailable
from conversations.replies import replylog
from conversations.replies.protocol import (
    FINAL_ONLY,
    Deliver,
    DeltaFrames,
    Frame,
    saved_done_frame,
)
from conversations.replies.registry import Registry, registry

logger = logging.getLogger(__name__)


class Reply(Protocol):
    @property
    def conversation_id(self) -> uuid.UUID: ...

    @property
    def message_id(self) -> uuid.UUID: ...

    def follow(self, key: str, deliver: Deliver, after_seq: int = 0) -> None: ...

    def unfollow(self, key: str) -> None: ...

    async def stop(self) -> None: ...

    async def final(self) -> Frame: ...


class RemoteReply:
    """Another worker's reply: each follower tails the reply log from its own cursor."""

    def __init__(self, meta: replylog.GenerationMeta, owner: Registry) -> None:
        self.meta = meta
        self.registry = owner
        self._pumps: dict[str, asyncio.Task[None]] = {}

    @property
    def conversation_id(self) -> uuid.UUID:
        return uuid.UUID(self.meta.conversation_id)

    @property
    def message_id(self) -> uuid.UUID:
        return uuid.UUID(self.meta.message_id)

    def follow(self, key: str, deliver: Deliver, after_seq: int = 0) -> None:
        current = self._pumps.get(key)
        if current is not None and not current.done():
            if after_seq == FINAL_ONLY:
                return  # already following: chat.done comes that way
            current.cancel()
        pump = asyncio.get_running_loop().create_task(self._pump(key, deliver, after_seq))
        self._pumps[key] = pump
        # Known to the registry while followed: a socket that closes unfollows it there.
        self.registry.remote[self.conversation_id] = self

    def unfollow(self, key: str) -> None:
        pump = self._pumps.pop(key, None)
        if pump is not None:
            pump.cancel()
        self._forget_if_idle()

    async def stop(self) -> None:
        await replylog.guarded(replylog.publish_stop(self.conversation_id))

    async def final(self) -> Frame:
        async for fields in replylog.entries(self.meta.message_id, FINAL_ONLY):
            if "final" in fields:
                frame: Frame = json.loads(fields["final"])
                return frame
        raise Unavailable("Lost the reply's log; its end will show when you reload.")

    async def _pump(self, key: str, deliver: Deliver, after_seq: int) -> None:
        deltas = DeltaFrames(self.conversation_id, self.message_id)
        try:
            async for fields in replylog.entries(self.meta.message_id, after_seq):
                if "final" in fields:
                    frame = json.loads(fields["final"])
                elif "seq" in fields:
                    frame = deltas.frame(int(fields["seq"]), fields["text"])
                else:
                    continue
                if not deliver(frame):
                    return  # the socket closed, or was dropped for reading too slowly
        except (RedisError, OSError, TimeoutError) as exc:
            replylog.mark_down(exc)
            lost = Unavailable("Lost the reply's log; resume in a moment.")
            deliver(lost.frame(conversation_id=self.meta.conversation_id))
        finally:
            if self._pumps.get(key) is asyncio.current_task():
                del self._pumps[key]
                self._forget_if_idle()

    def _forget_if_idle(self) -> None:
        if not self._pumps and self.registry.remote.get(self.conversation_id) is self:
            del self.registry.remote[self.conversation_id]


class SavedReply:
    """A reply already in the database (a re-send of a message answered before)."""

    def __init__(self, conversation_id: uuid.UUID, saved: ReplyInfo) -> None:
        self._conversation_id = conversation_id
        self.saved = saved

    @property
    def conversation_id(self) -> uuid.UUID:
        return self._conversation_id

    @property
    def message_id(self) -> uuid.UUID:
        return self.saved.message_id

    def follow(self, key: str, deliver: Deliver, after_seq: int = 0) -> None:
        deliver(saved_done_frame(self._conversation_id, self.saved))

    def unfollow(self, key: str) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def final(self) -> Frame:
        return saved_done_frame(self._conversation_id, self.saved)


def remote_reply(meta: replylog.GenerationMeta) -> RemoteReply:
    """The one RemoteReply of that generation on this worker, shared by its followers."""
    known = registry.remote.get(uuid.UUID(meta.conversation_id))
    if known is not None and known.meta.message_id == meta.message_id:
        return known
    return RemoteReply(meta, registry)


async def find_reply(conversation_id: uuid.UUID, user_id: int) -> Reply | None:
    """The user's reply in flight in that conversation, on this worker or another; None when
    nothing is generated there (or the conversation is not theirs)."""
    local = registry.get(conversation_id)
    if local is not None:
        return local if local.user_id == user_id else None
    meta = await replylog.guarded(replylog.active(conversation_id))
    if meta is None or meta.user_id != user_id:
        return None
    return remote_reply(meta)
