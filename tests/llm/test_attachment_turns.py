"""Turns with attachments, end to end: uploads judged and stored as the upload view does, sent
over the real WebSocket stack, and the request as each provider's wire receives it from the
real SDK (google-genai's inline image parts, the openai SDK's image_url data URLs)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from attachments.judge import judge
from attachments.models import Upload
from attachments.services import upload_create
from conversations.db import db_call
from conversations.models import Message
from personas.models import Persona
from tests.attachments import conftest as attachments_conftest
from tests.attachments import files
from tests.llm import test_turns
from tests.llm.test_turns import Upstream, existing_conversation
from tests.llm.turn_servers import system_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

# The whole-turn fixtures: each provider's local server, and the default provider set to it.
openai_turns = test_turns.openai_turns
gemini_turns = test_turns.gemini_turns
upstream = test_turns.upstream


# Uploads stored in a folder of the test's own, as in tests/attachments.
media = attachments_conftest.media


def uploaded(owner: Any, name: str, data: bytes) -> Upload:
    """An upload as POST /api/uploads/ makes it: judged (re-encoded), stored, inserted."""
    return upload_create(owner_id=owner.pk, name=name, judged=judge(data, name), quota_bytes=0)


def stored_bytes(upload: Upload) -> bytes:
    with upload.file.open("rb") as stored:
        return bytes(stored.read())


def last_user_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of the newest user message, in either wire format."""
    if "messages" in body:
        content = body["messages"][-1]["content"]
        return [{"type": "text", "text": content}] if isinstance(content, str) else content
    return list(body["contents"][-1]["parts"])


def images_of(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(mime type, bytes) of every image in the request, in order, in either wire format."""
    found = []
    if "messages" in body:
        for message in body["messages"]:
            if isinstance(message["content"], list):
                for part in message["content"]:
                    if part["type"] == "image_url":
                        head, data = part["image_url"]["url"].split(",", 1)
                        assert head.endswith(";base64")
                        found.append((head[len("data:") : -len(";base64")], base64.b64decode(data)))
        return found
    for content in body["contents"]:
        for part in content["parts"]:
            if "inlineData" in part:
                inline = part["inlineData"]
                # google-genai writes the type in snake case and the bytes in URL-safe base64
                # without padding; Gemini's JSON (proto3) reads either spelling of each.
                mime = inline.get("mimeType", inline.get("mime_type"))
                found.append((mime, proto_bytes(inline["data"])))
    return found


def proto_bytes(text: str) -> bytes:
    """Bytes as proto3 JSON carries them: standard or URL-safe base64, padded or not."""
    return base64.urlsafe_b64decode(
        text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
    )


def texts_of(parts: list[dict[str, Any]]) -> str:
    return "".join(str(part.get("text", "")) for part in parts)


async def test_an_image_and_a_file_reach_the_model_in_its_own_wire_format(
    upstream: Upstream, ws: Any, alice: Any, persona: Any
) -> None:
    upstream.reply(event_pause=0)
    photo = await db_call(uploaded)(alice, "chart.png", files.png(64, 48, color="blue"))
    notes = await db_call(uploaded)(alice, "notes.md", b"# Plan\n\nShip on Friday.\n")
    conversation_id = await db_call(existing_conversation)(alice, persona, "Hi", "Hello!")
    socket = await ws(alice)

    await socket.send(
        {
            "type": "chat.send",
            "conversation_id": conversation_id,
            "content": "What does the chart show?",
            "client_id": "b6f0f3c2-5f8e-4a59-9d7e-1f2a3b4c5d6e",
            "attachments": [str(photo.id), str(notes.id)],
        }
    )
    frames = await socket.receive_until("chat.done")

    assert frames[-1]["status"] == "complete"
    (sent,) = upstream.server.requests_for("reply")
    parts = last_user_parts(sent.body)
    if upstream.name == "openai":
        # The vision form: a text part, then the image as a data URL.
        assert [part["type"] for part in parts] == ["text", "image_url"]
    else:
        # google-genai's inline data part after the text.
        assert "text" in parts[0] and set(parts[1]) == {"inlineData"}
    assert images_of(sent.body) == [("image/png", await db_call(stored_bytes)(photo))]
    text = texts_of(parts)
    assert '<file name="notes.md">\n# Plan\n\nShip on Friday.\n\n</file>' in text
    assert text.endswith("What does the chart show?")
    assert "notes.md" not in system_text(sent.body)


async def test_an_image_alone_is_sent_without_an_empty_text_part(
    upstream: Upstream, ws: Any, alice: Any, persona: Any
) -> None:
    upstream.reply(event_pause=0)
    photo = await db_call(uploaded)(alice, "screenshot.png", files.png())
    conversation_id = await db_call(existing_conversation)(alice, persona)
    socket = await ws(alice)

    await socket.send(
        {
            "type": "chat.send",
            "conversation_id": conversation_id,
            "content": "",
            "client_id": "0d7c1a52-8a5b-4b2e-9c57-5f1c0b8e2d31",
            "attachments": [str(photo.id)],
        }
    )
    frames = await socket.receive_until("chat.done")

    assert frames[-1]["status"] == "complete"
    (sent,) = upstream.server.requests_for("reply")
    parts = last_user_parts(sent.body)
    assert len(parts) == 1 and texts_of(parts) == ""
    assert len(images_of(sent.body)) == 1


async def test_images_of_earlier_messages_go_with_the_next_turn(
    upstream: Upstream, ws: Any, alice: Any, persona: Any
) -> None:
    upstream.reply(event_pause=0)
    first = await db_call(uploaded)(alice, "before.png", files.png(color="green"))
    second = await db_call(uploaded)(alice, "after.jpg", files.jpeg())
    conversation_id = await db_call(existing_conversation)(alice, persona)
    socket = await ws(alice)

    for upload, question in ((first, "Look at this."), (second, "And how does this compare?")):
        await socket.send(
            {
                "type": "chat.send",
                "conversation_id": conversation_id,
                "content": question,
                "client_id": str(upload.id),
                "attachments": [str(upload.id)],
            }
        )
        await socket.receive_until("chat.done")

    later = upstream.server.requests_for("reply")[-1]
    assert [mime for mime, _ in images_of(later.body)] == ["image/png", "image/jpeg"]


async def test_a_persona_without_images_refuses_before_the_turn_and_saves_nothing(
    upstream: Upstream, ws: Any, alice: Any, persona: Any
) -> None:
    upstream.reply(event_pause=0)
    await db_call(Persona.objects.filter(pk=persona.pk).update)(accepts_images=False)
    photo = await db_call(uploaded)(alice, "photo.png", files.png())
    conversation_id = await db_call(existing_conversation)(alice, persona, "Hi", "Hello!")
    socket = await ws(alice)

    await socket.send(
        {
            "type": "chat.send",
            "conversation_id": conversation_id,
            "content": "What is this?",
            "client_id": "7b1d2c3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
            "attachments": [str(photo.id)],
        }
    )
    error = await socket.receive_type("chat.error")

    assert error["code"] == "invalid"
    assert "image" in error["message"].lower()
    assert upstream.server.requests_for("reply") == []
    assert await db_call(Message.objects.filter(conversation_id=conversation_id).count)() == 2
