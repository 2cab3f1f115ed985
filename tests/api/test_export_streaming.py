"""Export streams a page of messages at a time, and writes exactly what it wrote when it built
the whole file in memory; the detail is the same JSON as before, built message by message."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.http import JsonResponse
from django.test import Client
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.serializers import (
    MESSAGE_CHUNK,
    conversation_detail_dict,
    conversation_export_dict,
)
from conversations.services import message_append
from personas.models import Persona
from tests.api.test_conversations_api import streamed

pytestmark = pytest.mark.django_db

TRICKY = [
    'Quotes " and \\ backslashes',
    "Lines\nand\r\nmore lines\n\n",
    "Café, naïve, 😀, 中文, and a line separator \u2028 here",
    "<script>alert(1)</script> **bold**",
    "   padded   ",
]


def old_markdown(conversation: Conversation) -> str:
    """The Markdown export as it was built before it streamed (the format to keep)."""
    persona_name = conversation.persona.name
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    lines += [f"Persona: {persona_name}", f"Exported: {conversation.updated_at.isoformat()}", ""]
    for message in conversation.messages.all():
        heading = "You" if message.role == Message.Role.USER else persona_name
        if message.status != Message.Status.COMPLETE:
            heading += f" ({message.get_status_display().lower()})"
        lines += [f"## {heading}", "", message.content, ""]
    return "\n".join(lines).rstrip() + "\n"


def old_json(conversation: Conversation) -> str:
    return json.dumps(conversation_export_dict(conversation), indent=2, ensure_ascii=False)


def long_chat(owner: Any, persona: Persona, count: int, last: str | None) -> Conversation:
    """`count` messages, a minute apart, cycling through awkward texts; then `last`."""
    made = Conversation.objects.create(owner=owner, persona=persona, title="Long — «chat»")
    start = timezone.now() - timedelta(days=1)
    texts = [f"{i}: {TRICKY[i % len(TRICKY)]}" for i in range(count)]
    if last is not None:
        texts.append(last)
    for i, text in enumerate(texts):
        message = message_append(
            conversation=made,
            role=Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT,
            content=text,
            status="stopped" if i % 7 == 3 else "complete",
            error="Cut short." if i % 7 == 3 else "",
        )
        Message.objects.filter(id=message.id).update(created_at=start + timedelta(minutes=i))
    return Conversation.objects.select_related("persona").get(id=made.id)


def export(owner: Any, conversation: Conversation, kind: str) -> Any:
    client = Client()
    client.force_login(owner)
    return client.get(f"/api/conversations/{conversation.id}/export/", {"format": kind})


@pytest.mark.parametrize("kind", ["md", "json"])
@pytest.mark.parametrize(
    ("count", "last"),
    [
        pytest.param(0, None, id="empty"),
        pytest.param(1, None, id="one"),
        pytest.param(3 * MESSAGE_CHUNK + 7, "Ends in blanks  \n\n  ", id="pages-trailing-blanks"),
        pytest.param(2 * MESSAGE_CHUNK - 1, "", id="pages-empty-last-reply"),
        pytest.param(2 * MESSAGE_CHUNK, None, id="exactly-two-pages"),
    ],
)
def test_export_streams_the_same_bytes_as_before(
    alice: Any, pirate: Persona, kind: str, count: int, last: str | None
) -> None:
    made = long_chat(alice, pirate, count, last)
    expected = old_markdown(made) if kind == "md" else old_json(made)

    answer = export(alice, made, kind)

    assert answer.status_code == 200
    assert answer.streaming
    assert streamed(answer).decode() == expected


def test_messages_saved_in_the_same_instant_are_each_exported_once(
    alice: Any, persona: Persona
) -> None:
    made = long_chat(alice, persona, 2 * MESSAGE_CHUNK + 5, None)
    Message.objects.filter(conversation=made).update(created_at=timezone.now())

    body = json.loads(streamed(export(alice, made, "json")))

    ids = [m["id"] for m in body["messages"]]
    assert sorted(ids) == sorted(str(i) for i in made.messages.values_list("id", flat=True))


def test_detail_is_the_same_json_as_before(alice: Any, persona: Persona) -> None:
    made = long_chat(alice, persona, MESSAGE_CHUNK + 3, "")
    expected = JsonResponse(conversation_detail_dict(made)).content
    client = Client()
    client.force_login(alice)

    answer = client.get(f"/api/conversations/{made.id}/")

    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/json"
    assert answer.content == expected
    assert len(answer.json()["messages"]) == MESSAGE_CHUNK + 4
