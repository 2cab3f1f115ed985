"""The WebSocket consumer: it parses frames and orchestrates; the work lives elsewhere."""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError

from conversations import metrics, services
from conversations.db import db_call
from conversations.errors import ChatError, NotFound, Unavailable
from conversations.frames import Resume, Send, Stop, parse_frame
from conversations.streaming import Frame, accepted_frame, registry, saved_done_frame
from conversations.titles import announce_title
from conversations.turns import turn_start

logger = logging.getLogger(__name__)


class ChatConsumer(AsyncWebsocketConsumer):
    user_id: int
    group: str
    counted = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.user_id = user.id
        self.group = f"user.{user.id}"
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
        except Exception:
            # Without the channel layer the socket still streams its own replies.
            logger.warning("channel layer unavailable; socket runs without fan-out")
        await self.accept()
        self.counted = True
        metrics.OPEN_SOCKETS.inc()

    async def disconnect(self, code: int) -> None:
        if not getattr(self, "counted", False):
            return
        self.counted = False
        metrics.OPEN_SOCKETS.dec()
        registry.unfollow_all(self.channel_name)
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        except Exception:
            logger.debug("group_discard failed", exc_info=True)

    async def send_frame(self, frame: Frame) -> None:
        await self.send(text_data=json.dumps(frame))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        known: dict[str, Any] = {}
        try:
            command = parse_frame(text_data)
            if isinstance(command, Send):
                known = {
                    "client_id": str(command.client_id),
                    "conversation_id": str(command.conversation_id)
                    if command.conversation_id
                    else None,
                }
                await self.chat_send(command)
            else:
                known = {"conversation_id": str(command.conversation_id)}
                if isinstance(command, Stop):
                    await self.chat_stop(command)
                else:
                    await self.chat_resume(command)
        except ChatError as error:
            await self.refuse(error, known)
        except DatabaseError:
            logger.warning("database unavailable for a chat frame", exc_info=True)
            await self.refuse(
                Unavailable("The database could not be reached; nothing was saved."), known
            )

    async def refuse(self, error: ChatError, known: dict[str, Any]) -> None:
        metrics.REFUSALS.labels(error.code).inc()
        await self.send_frame(error.frame(**known))

    # --- commands ------------------------------------------------------------------------

    async def chat_send(self, command: Send) -> None:
        started = await turn_start(user_id=self.user_id, command=command)
        await self.send_frame(accepted_frame(started.ctx))
        if started.ctx.conversation_created:
            # Other tabs learn of the new conversation; this one hears it too.
            await announce_title(self.user_id, started.ctx.conversation_id, started.ctx.title)
        if started.generation is None:
            assert started.ctx.existing_reply is not None
            await self.send_frame(
                saved_done_frame(started.ctx.conversation_id, started.ctx.existing_reply)
            )
            return
        await started.generation.follow(self.channel_name, self.send_frame, 0)

    async def chat_stop(self, command: Stop) -> None:
        running = registry.get(command.conversation_id)
        if running is not None and running.user_id == self.user_id:
            running.stop()
            # The stopping socket hears chat.done even if it was not following.
            await running.follow(self.channel_name, self.send_frame, len(running.frames))
            return
        await self._idle_or_not_found(command.conversation_id)

    async def chat_resume(self, command: Resume) -> None:
        running = registry.get(command.conversation_id)
        if running is not None and running.user_id == self.user_id:
            await running.follow(self.channel_name, self.send_frame, command.after_seq)
            return
        await self._idle_or_not_found(command.conversation_id)

    async def _idle_or_not_found(self, conversation_id: Any) -> None:
        owned = await db_call(services.conversation_owned)(
            user_id=self.user_id, conversation_id=conversation_id
        )
        if not owned:
            raise NotFound("No such conversation.")
        await self.send_frame({"type": "chat.idle", "conversation_id": str(conversation_id)})

    # --- channel layer events ------------------------------------------------------------

    async def conversation_updated(self, event: dict[str, Any]) -> None:
        await self.send_frame(event["frame"])
