"""A client that hangs up on POST /api/conversations/<id>/messages/ part-way through still
gets its reply saved: the turn's start belongs to the process, not to the request."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

import pytest
from django.conf import settings

from conversations.db import db_call
from conversations.models import Conversation, Message
from personas.models import Persona
from tests.conftest import session_cookie
from tests.workers.conftest import Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]

CSRF_TOKEN = "a" * 32  # any 32 letters: Django compares the cookie with the header


def post_and_hang_up(worker: Worker, cookie: str, conversation_id: uuid.UUID, after: float) -> None:
    """Send the whole request, then close the connection without reading the answer."""
    body = json.dumps({"content": "Are you still there?", "client_id": str(uuid.uuid4())})
    head = (
        f"POST /api/conversations/{conversation_id}/messages/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{worker.port}\r\n"
        f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}; "
        f"{settings.CSRF_COOKIE_NAME}={CSRF_TOKEN}\r\n"
        f"X-CSRFToken: {CSRF_TOKEN}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as sock:
        sock.sendall(head.encode() + body.encode())
        time.sleep(after)


def conversations_for(owner: Any, persona: Persona, count: int) -> list[uuid.UUID]:
    return [Conversation.objects.create(owner=owner, persona=persona).id for _ in range(count)]


def unanswered() -> tuple[int, int]:
    """(user messages, those of them without a reply row)."""
    users = Message.objects.filter(role=Message.Role.USER)
    return users.count(), users.filter(children__isnull=True).count()


async def test_every_message_of_a_client_that_hangs_up_gets_a_reply(spawn, alice, persona):
    worker = spawn("hangup", DEMO_REPLY_WORDS="5", DEMO_TOKEN_DELAY_MS="5")
    cookie = await db_call(session_cookie)(alice)
    # 10-20 ms is when the user message has just been committed and the reply not started.
    delays = [0.010 + 0.001 * (i % 11) for i in range(22)]
    chats = await db_call(conversations_for)(alice, persona, len(delays))

    for conversation_id, delay in zip(chats, delays, strict=True):
        await asyncio.to_thread(post_and_hang_up, worker, cookie, conversation_id, delay)

    # Replies take ~50 ms each; wait for the last to be saved, then count.
    deadline = time.monotonic() + 30
    while (counts := await db_call(unanswered)())[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    saved, without_reply = counts
    assert saved > 0, "no hang-up came late enough to commit a message; nothing was tested"
    assert without_reply == 0, f"{without_reply} of {saved} messages never got a reply"
