"""The WebSocket consumer: it parses frames and orchestrates; the work lives elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from conversations import metrics, services
from conversations.db import db_call
from conversations.errors import ChatError, NotFound, SessionEnded, Unavailable
from conversations.replies import replylog, worker
from conversations.replies.generation import (
    Frame,
    accepted_frame,
    delta_frame,
    registry,
    saved_done_frame,
)
from conversations.replies.outbox import SERVER_SOCKET_KEY, Outbox, ServerSocket
from conversations.replies.protocol import Resume, Send, Stop, parse_frame
from conversations.replies.start import turn_start
from conversations.signals import user_group

logger = logging.getLogger(__name__)

# 4401 mirrors HTTP 401: the session ended (logout, password change, deactivation, deletion).
# The page asks the API whether it is still signed in, and goes to the login page if not.
SESSION_ENDED_CLOSE_CODE = 4401


class ResilientLayer:
    """A channel layer whose receive() waits out a Redis outage instead of ending the socket.

    Channels awaits the layer's receive() beside the socket's own; if it raised, the socket
    would close with 1011 even though its own reply needs no Redis at all.
    """

    def __init__(self, layer: Any) -> None:
        self._layer = layer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    async def receive(self, channel: str) -> Any:
        while True:
            inner = asyncio.ensure_future(self._layer.receive(channel))
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


class ChatConsumer(AsyncWebsocketConsumer):
    user_id: int
    group: str
    session_key: str | None
    outbox: Outbox
    counted = False
    ending = False
    channel_layer: Any

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # As AsyncConsumer.__call__, with the channel layer wrapped to survive outages.
        self.scope = scope
        layer = get_channel_layer(self.channel_layer_alias)
        self.channel_layer = ResilientLayer(layer) if layer is not None else None
        self.base_send = send
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        with contextlib.suppress(StopConsumer):
            await await_many_dispatch(sources, self.dispatch)

    async def connect(self) -> None:
        self.remote_follows: dict[str, asyncio.Task[None]] = {}
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
        self.outbox = Outbox(
            lambda text: self.send(text_data=text),
            lambda code: self.close(code=code),
            self.scope.get(SERVER_SOCKET_KEY) or ServerSocket(None),
        )
        self.outbox.start()
        self.counted = True
        registry.sockets.add(self)
        metrics.OPEN_SOCKETS.inc()

    async def disconnect(self, code: int) -> None:
        if not getattr(self, "counted", False):
            return
        self.counted = False
        self.outbox.close()
        metrics.OPEN_SOCKETS.dec()
        registry.sockets.discard(self)
        registry.unfollow_all(self.channel_name)
        for task in self.remote_follows.values():
            task.cancel()
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        except Exception:
            logger.debug("group_discard failed", exc_info=True)

    def push(self, frame: Frame) -> bool:
        """Queue a frame for this socket without waiting; False once it stopped taking them."""
        return self.outbox.put(frame)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ending:
            return
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
        except SessionEnded as error:
            await self.refuse(error, known)
            await self.end_session()
        except ChatError as error:
            await self.refuse(error, known)
        except DatabaseError:
            logger.warning("database unavailable for a chat frame", exc_info=True)
            await self.refuse(
                Unavailable("The database could not be reached; nothing was saved."), known
            )
        except Exception:
            # A bug must cost one request, not the socket and the user's other replies.
            logger.exception("chat frame failed")
            await self.refuse(Unavailable("Something went wrong on our side; try again."), known)

    async def refuse(self, error: ChatError, known: dict[str, Any]) -> None:
        metrics.REFUSALS.labels(error.code).inc()
        self.push(error.frame(**known))

    # --- commands ------------------------------------------------------------------------

    async def chat_send(self, command: Send) -> None:
        started = await turn_start(
            user_id=self.user_id, command=command, session_key=self.session_key
        )
        accepted = accepted_frame(started.ctx)
        self.push(accepted)
        if started.generation is not None:
            started.generation.follow(self.channel_name, self.push, 0)
            # Other tabs have not seen the message: it travels with their copy.
            await self._tell_other_tabs({**accepted, "content": started.ctx.content})
        elif started.remote is not None:
            self._follow_remote(started.remote, 0)
        else:
            assert started.ctx.existing_reply is not None
            self.push(saved_done_frame(started.ctx.conversation_id, started.ctx.existing_reply))

    async def chat_stop(self, command: Stop) -> None:
        running = registry.get(command.conversation_id)
        if running is not None and running.user_id == self.user_id:
            running.stop()
            # The stopping socket hears chat.done even if it was not following.
            running.follow(self.channel_name, self.push, len(running.frames))
            return
        remote = await self._remote(command.conversation_id)
        if remote is not None:
            await replylog.guarded(replylog.publish_stop(command.conversation_id))
            self._follow_remote(remote, replylog.FINAL_ONLY)
            return
        await self._idle_or_not_found(command.conversation_id)

    async def chat_resume(self, command: Resume) -> None:
        running = registry.get(command.conversation_id)
        if running is not None and running.user_id == self.user_id:
            running.follow(self.channel_name, self.push, command.after_seq)
            return
        remote = await self._remote(command.conversation_id)
        if remote is not None:
            self._follow_remote(remote, command.after_seq)
            return
        await self._idle_or_not_found(command.conversation_id)

    # --- replies generated elsewhere -----------------------------------------------------

    async def _remote(self, conversation_id: uuid.UUID) -> replylog.GenerationMeta | None:
        meta = await replylog.guarded(replylog.active(conversation_id))
        return meta if meta is not None and meta.user_id == self.user_id else None

    def _follow_remote(self, meta: replylog.GenerationMeta, after_seq: int) -> None:
        """Follow another worker's generation through its reply log in Redis."""
        key = meta.conversation_id
        current = self.remote_follows.get(key)
        if current is not None and not current.done():
            if after_seq == replylog.FINAL_ONLY:
                return  # already following: chat.done will come that way
            current.cancel()
        self.remote_follows[key] = asyncio.create_task(self._pump_remote(meta, after_seq))

    async def _pump_remote(self, meta: replylog.GenerationMeta, after_seq: int) -> None:
        conversation_id = uuid.UUID(meta.conversation_id)
        message_id = uuid.UUID(meta.message_id)
        try:
            async for fields in replylog.entries(meta.message_id, after_seq):
                if "final" in fields:
                    frame = json.loads(fields["final"])
                elif "seq" in fields:
                    frame = delta_frame(
                        conversation_id, message_id, int(fields["seq"]), fields["text"]
                    )
                else:
                    continue
                if not self.push(frame):
                    return  # the socket closed, or was dropped for reading too slowly
        except (RedisError, OSError, TimeoutError) as exc:
            replylog.mark_down(exc)
            self.push(
                Unavailable("Lost the reply's log; resume in a moment.").frame(
                    conversation_id=meta.conversation_id
                )
            )
        except Exception:
            # The socket closed while we followed: nothing to do, and no outage to report.
            logger.debug("remote follow ended", exc_info=True)

    async def _tell_other_tabs(self, accepted: Frame) -> None:
        """Multi-tab sync: the user's other sockets, on any worker, follow this reply too."""
        try:
            await self.channel_layer.group_send(
                self.group,
                {"type": "chat.started", "frame": accepted, "sender": self.channel_name},
            )
        except Exception:
            logger.debug("could not tell other tabs", exc_info=True)

    async def _idle_or_not_found(self, conversation_id: Any) -> None:
        owned = await db_call(services.conversation_owned)(
            user_id=self.user_id, conversation_id=conversation_id
        )
        if not owned:
            raise NotFound("No such conversation.")
        self.push({"type": "chat.idle", "conversation_id": str(conversation_id)})

    # --- channel layer events ------------------------------------------------------------

    async def conversation_updated(self, event: dict[str, Any]) -> None:
        if self.counted:  # the socket may have closed while the event was on its way
            self.push(event["frame"])

    async def session_ended(self, event: dict[str, Any]) -> None:
        """A logout: the sockets of that session end, on every worker."""
        if self.counted and event.get("session_key") == self.session_key:
            await self.end_session()

    async def session_check(self, event: dict[str, Any]) -> None:
        """The user changed (password, deactivated, deleted): sockets whose session no longer
        signs that user in end, on every worker."""
        if not self.counted:
            return
        try:
            user_id = await db_call(services.session_user_id)(session_key=self.session_key)
        except DatabaseError:
            logger.warning("could not check a session; the next chat.send checks it again")
            return
        if user_id != self.user_id:
            await self.end_session()

    async def end_session(self) -> None:
        logger.info("closing a socket whose session ended (user %s)", self.user_id)
        self.ending = True
        # What is queued (the refusal, if any) goes first, then the close.
        self.outbox.finish(SESSION_ENDED_CLOSE_CODE)

    async def chat_started(self, event: dict[str, Any]) -> None:
        if event["sender"] == self.channel_name or not self.counted:
            return
        frame = event["frame"]
        conversation_id = uuid.UUID(frame["conversation_id"])
        running = registry.get(conversation_id)
        if running is not None and running.user_id == self.user_id:
            self.push(frame)
            running.follow(self.channel_name, self.push, 0)
            return
        remote = await self._remote(conversation_id)
        if remote is not None:
            self.push(frame)
            self._follow_remote(remote, 0)
