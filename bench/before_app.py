"""The "before" design, rebuilt for the benchmark: one transaction held across the stream.

This is the seed's bug on purpose. A turn runs in one sync thread that opens
`transaction.atomic()`, saves the user message (the real `services.turn_begin`), then streams
the demo words at the demo pace *inside the transaction*, saves the reply (the real
`services.reply_save`) and only then commits. So every stream holds one database connection
(and an `idle in transaction` backend) for its whole life.

It reuses the project's settings, auth, frames, prompt and demo words, so the only difference
from the real consumer is where the connection lives. Served by Daphne:

    daphne -p 8102 bench.before_app:application

`BENCH_BEFORE_THREADS` sizes the thread pool the turns run on (one thread per stream, so it
defaults to 4096: the database, not the threads, is what runs out). With the project's pool
(`DB_POOL_MAX_SIZE`, `DB_POOL_TIMEOUT`) streams queue for a connection and time out; with
`DB_POOL=false` every stream opens its own backend until PostgreSQL's `max_connections`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_asgi_app = get_asgi_application()

from asgiref.sync import sync_to_async  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import DatabaseError, connections, transaction  # noqa: E402
from django.urls import path  # noqa: E402

from conversations import services  # noqa: E402
from conversations.auth import AuthMiddlewareStack  # noqa: E402
from conversations.errors import ChatError  # noqa: E402
from conversations.llm.base import Usage  # noqa: E402
from conversations.llm.demo import demo_reply_tokens  # noqa: E402
from conversations.prompts import build_request  # noqa: E402
from conversations.replies.protocol import (  # noqa: E402
    Send,
    accepted_frame,
    delta_frame,
    done_frame,
    parse_frame,
)

logger = logging.getLogger("bench.before")

EXECUTOR = ThreadPoolExecutor(
    max_workers=int(os.environ.get("BENCH_BEFORE_THREADS", "4096")),
    thread_name_prefix="before-turn",
)


class BeforeConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        self.user_id = user.id
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            command = parse_frame(text_data)
        except ChatError as error:
            await self.send(text_data=json.dumps(error.frame()))
            return
        if not isinstance(command, Send):
            await self.send(text_data=json.dumps({"type": "chat.idle"}))
            return
        loop = asyncio.get_running_loop()
        # The whole turn, stream included, in one thread holding one transaction.
        await sync_to_async(self.turn, thread_sensitive=False, executor=EXECUTOR)(command, loop)

    def emit(self, loop: asyncio.AbstractEventLoop, frame: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.send(text_data=json.dumps(frame)), loop).result()

    def turn(self, command: Send, loop: asyncio.AbstractEventLoop) -> None:
        delay = settings.DEMO_TOKEN_DELAY_MS / 1000
        window = settings.STREAM_COALESCE_MS / 1000
        try:
            with transaction.atomic():
                ctx = services.turn_begin(
                    user_id=self.user_id,
                    conversation_id=command.conversation_id,
                    persona_slug=command.persona,
                    content=command.content,
                    client_id=command.client_id,
                    history_limit=settings.HISTORY_MAX_MESSAGES,
                )
                self.emit(loop, accepted_frame(ctx))
                words = demo_reply_tokens(build_request(ctx), settings.DEMO_REPLY_WORDS)
                frames: list[str] = []
                buffer: list[str] = []
                last_flush = 0.0
                for word in words:
                    if delay:
                        time.sleep(delay)
                    buffer.append(word)
                    if not frames or time.monotonic() - last_flush >= window:
                        frames.append("".join(buffer))
                        buffer.clear()
                        last_flush = time.monotonic()
                        self.emit(
                            loop,
                            delta_frame(
                                ctx.conversation_id, ctx.message_id, len(frames), frames[-1]
                            ),
                        )
                if buffer:
                    frames.append("".join(buffer))
                    self.emit(
                        loop,
                        delta_frame(ctx.conversation_id, ctx.message_id, len(frames), frames[-1]),
                    )
                content = "".join(frames)
                usage = Usage(input_tokens=None, output_tokens=len(words))
                services.reply_save(
                    message_id=ctx.message_id,
                    conversation_id=ctx.conversation_id,
                    user_message_id=ctx.user_message_id,
                    content=content,
                    status="complete",
                    input_tokens=None,
                    output_tokens=len(words),
                    error="",
                )
            self.emit(
                loop,
                done_frame(
                    ctx.conversation_id,
                    ctx.message_id,
                    status="complete",
                    content=content,
                    usage=usage,
                    error=None,
                ),
            )
        except DatabaseError as exc:
            logger.warning("before design: database error: %s", exc)
            self.emit(
                loop,
                {
                    "type": "chat.error",
                    "code": "unavailable",
                    "message": str(exc)[:200],
                    "client_id": str(command.client_id),
                },
            )
        except Exception as exc:  # a socket gone away, mostly
            logger.warning("before design: turn failed: %r", exc)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/chat/", BeforeConsumer.as_asgi())]))
        ),
    }
)
