"""Run by test_sqlite_smoke in a fresh process: the embedded default, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django.setup()

from channels.testing import WebsocketCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django.test import Client  # noqa: E402

from accounts.services import demo_user_ensure  # noqa: E402
from chatproject.asgi import application  # noqa: E402
from conversations.db import db_call  # noqa: E402
from conversations.models import Conversation, Message  # noqa: E402
from conversations.services import budget_for, path_history, reply_save  # noqa: E402


def login_cookie() -> str:
    demo_user_ensure(username="demo", password="demo-chat-2026", display_name="Sam")
    client = Client()
    # django-axes throttles by the request's address, so authenticate() needs a request.
    assert client.login(request=HttpRequest(), username="demo", password="demo-chat-2026")
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _reply_of_a_deleted_chat(conversation_id: str) -> dict[str, Any]:
    """A reply saved after its chat was deleted (by the ORM's save, as on SQLite): nothing
    saved, its tokens counted all the same."""
    conversation = Conversation.objects.get(id=conversation_id)
    owner_id = conversation.owner_id
    used = budget_for(user_id=owner_id).used_tokens
    conversation.delete()
    saved = reply_save(
        message_id=uuid.uuid4(),
        conversation_id=uuid.UUID(conversation_id),
        user_message_id=uuid.uuid4(),
        content="Too late",
        status="complete",
        input_tokens=5,
        output_tokens=7,
        error="",
        owner_id=owner_id,
        persona_slug="pirate",
    )
    return {"saved": saved, "counted": budget_for(user_id=owner_id).used_tokens - used}


def _listed_in_pages(cookie: str, conversation_id: str) -> dict[str, Any]:
    """The conversation list past one page, followed by its next link, on SQLite's way of
    storing UUIDs and times: every chat once."""
    from conversations.api import LIST_LIMIT

    chat = Conversation.objects.get(id=conversation_id)
    Conversation.objects.bulk_create(
        Conversation(owner_id=chat.owner_id, persona_id=chat.persona_id, title=f"c{n}")
        for n in range(LIST_LIMIT + 2)
    )
    client = Client(HTTP_HOST="localhost")
    client.cookies[settings.SESSION_COOKIE_NAME] = cookie
    first = client.get("/api/conversations/")
    link = first.headers.get("Link", "")
    second = client.get(link[1 : link.index(">")]) if link else None
    ids = [c["id"] for c in first.json() + (second.json() if second else [])]
    return {"listed": len(ids), "distinct": len(set(ids)), "total": Conversation.objects.count()}


def _empty_beside(conversation_id: str) -> str:
    """A chat of the same user and persona, made empty as `POST /api/conversations/` does."""
    chat = Conversation.objects.get(id=conversation_id)
    return str(Conversation.objects.create(owner_id=chat.owner_id, persona_id=chat.persona_id).id)


async def main() -> None:
    cookie = await db_call(login_cookie)()
    communicator = WebsocketCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"host", b"localhost"),
            (b"origin", b"http://localhost"),
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()),
        ],
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    frame = {
        "type": "chat.send",
        "conversation_id": None,
        "persona": "pirate",
        "content": "Hello from SQLite",
        "client_id": str(uuid.uuid4()),
    }

    async def turn(frame: dict) -> list[dict]:
        await communicator.send_to(text_data=json.dumps(frame))
        frames: list[dict] = []
        while not frames or frames[-1]["type"] != "chat.done":
            frames.append(json.loads(await communicator.receive_from(10)))
        return frames

    frames = await turn(frame)
    saved = await db_call(lambda: list(Message.objects.values_list("role", "content")))()
    # A second message and a new version of its reply: the active path, read by the
    # recursive query, on SQLite's way of storing UUIDs.
    conversation_id = frames[0]["conversation_id"]
    second = await turn(
        {
            **frame,
            "conversation_id": conversation_id,
            "content": "Again",
            "client_id": str(uuid.uuid4()),
        }
    )
    regenerated = await turn(
        {
            "type": "chat.regenerate",
            "conversation_id": conversation_id,
            "message_id": second[0]["message_id"],
            "client_id": str(uuid.uuid4()),
        }
    )
    # A chat made empty (as `POST /api/conversations/` makes it) is named by its first
    # message: SQLite's own write of the title with the active leaf.
    empty = await db_call(_empty_beside)(conversation_id)
    named = await turn({**frame, "conversation_id": empty, "client_id": str(uuid.uuid4())})
    await communicator.disconnect()
    path = await db_call(
        lambda: [
            h.content
            for h in path_history(
                leaf_id=Conversation.objects.get(id=conversation_id).current_leaf_id, limit=10
            )
        ]
    )()
    named_title = await db_call(lambda: Conversation.objects.get(id=empty).title)()
    pages = await db_call(_listed_in_pages)(cookie, conversation_id)
    gone = await db_call(_reply_of_a_deleted_chat)(conversation_id)
    print(
        json.dumps(
            {
                "engine": settings.DATABASES["default"]["ENGINE"],
                "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
                "done": frames[-1],
                "saved": saved,
                "path": path,
                "regenerated": regenerated[-1]["content"],
                "named": [named[0]["title"], named_title],
                "gone": gone,
                "pages": pages,
            }
        )
    )


if __name__ == "__main__":
    call_command("migrate", verbosity=0)
    call_command("seed_personas", verbosity=0)
    asyncio.run(main())
