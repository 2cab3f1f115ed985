"""Plain dicts for the JSON API: the shapes PROTOCOL.md promises, nothing more."""

from __future__ import annotations

from typing import Any

from conversations.models import Conversation, Message
from personas.models import Persona


def persona_dict(persona: Persona) -> dict[str, Any]:
    return {
        "slug": persona.slug,
        "name": persona.name,
        "description": persona.description,
        "avatar": persona.avatar,
        "is_default": persona.is_default,
    }


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "persona": conversation.persona.slug,
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_dict(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": message.created_at.isoformat(),
        # Additive to PROTOCOL.md's shape: lets a reloaded page say why a reply failed.
        "error": message.error or None,
    }


def conversation_detail_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        **conversation_dict(conversation),
        "messages": [message_dict(m) for m in conversation.messages.all()],
    }


def conversation_export_dict(conversation: Conversation) -> dict[str, Any]:
    # The export carries what a person needs to read it elsewhere: the persona's name too.
    return {
        **conversation_detail_dict(conversation),
        "persona_name": conversation.persona.name,
        "created_at": conversation.created_at.isoformat(),
    }


def conversation_markdown(conversation: Conversation) -> str:
    persona_name = conversation.persona.name
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    lines += [f"Persona: {persona_name}", f"Exported: {conversation.updated_at.isoformat()}", ""]
    for message in conversation.messages.all():
        heading = "You" if message.role == Message.Role.USER else persona_name
        if message.status != Message.Status.COMPLETE:
            heading += f" ({message.get_status_display().lower()})"
        lines += [f"## {heading}", "", message.content, ""]
    return "\n".join(lines).rstrip() + "\n"
