"""The WebSocket consumer: parse, authorize, hand over to the reply engine."""

from __future__ import annotations

import contextlib
import logging
import uuid
import weakref
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from conversations import metrics, services
from conversations.db import db_call
from conversations.errors import ChatError, NotFound, SessionEnded, Unavailable
from conversations.replies import worker
from conversations.replies.layer import LocalChannelLayer
from conversations.replies.outbox import SERVER_SOCKET_KEY, Outbox, ServerSocket
from conversations.replies.protocol import (
    FINAL_ONLY,
    Frame,
    FrameRate,
    Regenerate,
    Resume,
    Send,
    Stop,
    Turn,
    accepted_frame,
    idle_frame,
    parse_frame,
)
from conversations.replies.registry import registry
from conversations.replies.reply import Reply, find_reply
from conversations.replies.start import turn_start
from conversations.signals import SessionEnds, user_group

logger = logging.getLogger(__name__)


# 4029 mirrors HTTP 429: the client sent frames faster than SOCKET_FRAMES_PER_SECOND.
FLOOD_CLOSE_CODE = 4029


class ChatConsumer(SessionEnds, AsyncWebsocketConsumer):
    inflow: FrameRate
    # The replies this socket follows, so that closing it unfollows those alone: a scan of
    # every reply of the worker on each close made a reconnect storm quadratic. Weak: a
    # reply that ended is dropped with the registry's hold on it.
    following: weakref.WeakSet[Reply]

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, less the `aclose_old_connections()` it awaits before every
        message (the handshake, each frame, each group event). That call takes a turn on
        asgiref's one shared sync thread, which every thread-sensitive call made outside an
        HTTP request shares: every socket's every message queued there, behind the other
        sockets' and behind whatever else held the thread. It closes connections this
        consumer never leaves open: db_call gives its own back inside the call
        (conversations/db.py)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' own, less the same hop after `disconnect()` (see `dispatch`)."""
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.user_id = user.id
        self.group = user_group(user.id)
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None else None
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
        except Exception:
            # Without the channel layer the socket still streams its own replies.
            logger.warning("channel layer unavailable; socket runs without fan-out")
        worker.ensure_started()
        await self.accept()
        server = self.scope.get(SERVER_SOCKET_KEY) or ServerSocket(None)
        self.outbox = Outbox(
            server.text_writer() or (lambda text: self.send(text_data=text)),
            lambda code: self.close(code=code),
            server,
        )
        self.outbox.start()
        self.inflow = FrameRate(settings.SOCKET_FRAMES_PER_SECOND)
        self.following = weakref.WeakSet()
        self.counted = True
        registry.sockets.add(self)
        metrics.OPEN_SOCKETS.inc()

    async def disconnect(self, code: int) -> None:
        if not self.counted:
            return
        self.counted = False
        self.outbox.detach()
        metrics.OPEN_SOCKETS.dec()
        registry.sockets.discard(self)
        for reply in list(self.following):
            reply.unfollow(self.channel_name)
        self.following.clear()
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    def _show(self, accepted: Frame, reply: Reply) -> bool:
        """Tell this socket of a reply (its chat.accepted) and follow it from its first
        delta, unless it follows it already: a re-send of a message this tab sent, or was
        told of by another tab's chat.started, whichever came first. Its chat.accepted and
        every delta come once. Whether it was told now."""
        if reply in self.following:
            return False
        self.push(accepted)
        self._follow(reply, 0)
        return True

    def _follow(self, reply: Reply, after_seq: int) -> None:
        reply.follow(self.channel_name, self.push, after_seq)
        self.following.add(reply)

    def push(self, frame: Frame) -> bool:
        """Queue a frame for this socket without waiting; False once it stopped taking them."""
        return self.outbox.put(frame)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ending:
            return
        if not self.inflow.take():
            logger.warning("closing a socket that floods frames (user %s)", self.user_id)
            metrics.REFUSALS.labels("flood").inc()
            self.ending = True
            self.outbox.cut(FLOOD_CLOSE_CODE)
            return
        known: dict[str, Any] = {}
        # What a refusal for the database says: a send saved nothing; a resume or a stop
        # changed nothing (a reply saved before stays saved) and may simply be asked again.
        unreachable = "The database could not be reached; try again in a moment."
        try:
            command = parse_frame(text_data)
            conversation_id = command.conversation_id
            known = {"conversation_id": str(conversation_id) if conversation_id else None}
            if isinstance(command, (Send, Regenerate)):
                known["client_id"] = str(command.client_id)
                unreachable = "The database could not be reached; nothing was saved."
                await self.chat_send(command)
            elif isinstance(command, Stop):
                await self.chat_stop(command)
            else:
                await self.chat_resume(command)
        except SessionEnded as error:
            self.refuse(error, known)
            await self.end_session()
        except ChatError as error:
            self.refuse(error, known)
        except DatabaseError:
            logger.warning("database unavailable for a chat frame", exc_info=True)
            self.refuse(Unavailable(unreachable), known)
        except Exception:
            # A bug must cost one request, not the socket and the user's other replies.
            logger.exception("chat frame failed")
            self.refuse(Unavailable("Something went wrong on our side; try again."), known)

    def refuse(self, error: ChatError, known: dict[str, Any]) -> None:
        metrics.REFUSALS.labels(error.code).inc()
        self.push(error.frame(**known))

    # --- commands ------------------------------------------------------------------------

    async def chat_send(self, command: Turn) -> None:
        started = await turn_start(
            user_id=self.user_id, command=command, session_key=self.session_key
        )
        accepted = accepted_frame(started.ctx)
        if not self._show(accepted, started.reply):
            return
        if not started.resumed:
            # Other tabs have not seen the message: it travels with their copy.
            await self._tell_other_tabs({**accepted, "content": started.ctx.content})

    async def chat_stop(self, command: Stop) -> None:
        reply = await find_reply(command.conversation_id, self.user_id)
        if reply is None:
            await self._idle_or_not_found(command.conversation_id)
            return
        await reply.stop()
        # The stopping socket hears chat.done even if it was not following.
        self._follow(reply, FINAL_ONLY)

    async def chat_resume(self, command: Resume) -> None:
        reply = await find_reply(command.conversation_id, self.user_id)
        if reply is None:
            await self._idle_or_not_found(command.conversation_id)
            return
        self._follow(reply, command.after_seq)

    async def _idle_or_not_found(self, conversation_id: uuid.UUID) -> None:
        owned = await db_call(services.conversation_owned)(
            user_id=self.user_id, conversation_id=conversation_id
        )
        if not owned:
            raise NotFound("No such conversation.")
        self.push(idle_frame(conversation_id))

    async def _tell_other_tabs(self, accepted: Frame) -> None:
        """Multi-tab sync: the user's other sockets, on any worker, follow this reply too."""
        layer = self.channel_layer
        if isinstance(layer, LocalChannelLayer) and layer.alone(self.group, self.channel_name):
            return  # one process, one tab: its own copy would only be dropped (chat_started)
        try:
            await layer.group_send(
                self.group,
                {"type": "chat.started", "frame": accepted, "sender": self.channel_name},
            )
        except Exception:
            logger.debug("could not tell other tabs", exc_info=True)

    # --- channel layer events ------------------------------------------------------------

    async def chat_started(self, event: dict[str, Any]) -> None:
        if event["sender"] == self.channel_name or not self.counted:
            return
        frame = event["frame"]
        reply = await find_reply(uuid.UUID(frame["conversation_id"]), self.user_id)
        if reply is not None:
            self._show(frame, reply)

    async def conversation_updated(self, event: dict[str, Any]) -> None:
        if self.counted:  # the socket may have closed while the event was on its way
            self.push(event["frame"])
