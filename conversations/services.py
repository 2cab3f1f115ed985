"""Sync ORM functions: the only place chat code touches the database.

Each function is one short transaction and returns plain values. The async consumer calls
them through `database_sync_to_async`, so the connection is back in the pool on return.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Profile
from conversations.context import (
    HistoryItem,
    PersonaInfo,
    ProfileInfo,
    ReplyInfo,
    TurnContext,
)
from conversations.errors import NotFound
from conversations.models import Conversation, Message
from conversations.prompts import title_from_message
from personas.models import Persona


def _persona_info(persona: Persona) -> PersonaInfo:
    return PersonaInfo(
        slug=persona.slug,
        name=persona.name,
        description=persona.description,
        system_prompt=persona.system_prompt,
        avatar=persona.avatar,
        provider=persona.provider,
        model=persona.model,
        temperature=persona.temperature,
    )


def _reply_info(message: Message) -> ReplyInfo:
    return ReplyInfo(
        message_id=message.id,
        content=message.content,
        status=message.status,
        error=message.error,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
    )


def persona_for_new_conversation(slug: str | None) -> Persona:
    personas = Persona.objects.filter(is_active=True)
    persona = (
        personas.filter(slug=slug).first()
        if slug is not None
        else (personas.filter(is_default=True).first() or personas.first())
    )
    if persona is None:
        raise NotFound(f"No persona {slug!r}." if slug is not None else "No persona is set up yet.")
    return persona


def conversation_owned(*, user_id: int, conversation_id: uuid.UUID) -> bool:
    return Conversation.objects.filter(id=conversation_id, owner_id=user_id).exists()


@transaction.atomic
def turn_begin(
    *,
    user_id: int,
    conversation_id: uuid.UUID | None,
    persona_slug: str | None,
    content: str,
    client_id: uuid.UUID,
    history_limit: int,
    check_persona: Callable[[PersonaInfo], object] | None = None,
) -> TurnContext:
    """Save the user's message (once per client_id) and read what the reply needs.

    `check_persona` may refuse the turn (e.g. its provider is misconfigured) by raising;
    the transaction then rolls back and nothing is saved.
    """
    existing = (
        Message.objects.select_related("conversation")
        .filter(conversation__owner_id=user_id, role=Message.Role.USER, client_id=client_id)
        .filter(**({"conversation_id": conversation_id} if conversation_id else {}))
        .first()
    )
    if existing is not None:
        return _context_for(existing, duplicate=True, history_limit=history_limit)

    created = conversation_id is None
    if conversation_id is None:
        persona = persona_for_new_conversation(persona_slug)
        conversation = Conversation.objects.create(
            owner_id=user_id, persona=persona, title=title_from_message(content)
        )
    else:
        # The row lock serialises concurrent turns on one conversation across workers.
        found = (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("persona")
            .filter(id=conversation_id, owner_id=user_id)
            .first()
        )
        if found is None:
            raise NotFound("No such conversation.")
        conversation = found
    if check_persona is not None:
        check_persona(_persona_info(conversation.persona))
    try:
        with transaction.atomic():
            message = Message.objects.create(
                conversation=conversation,
                role=Message.Role.USER,
                content=content,
                client_id=client_id,
            )
    except IntegrityError:
        # A concurrent re-send of the same client_id won the race: answer as a duplicate.
        message = Message.objects.get(
            conversation=conversation, role=Message.Role.USER, client_id=client_id
        )
        return _context_for(message, duplicate=True, history_limit=history_limit)
    if not created:
        Conversation.objects.filter(id=conversation.id).update(updated_at=timezone.now())
    return _context_for(message, created=created, history_limit=history_limit)


def _context_for(
    message: Message, *, history_limit: int, duplicate: bool = False, created: bool = False
) -> TurnContext:
    conversation = Conversation.objects.select_related("persona").get(id=message.conversation_id)
    profile, _ = Profile.objects.get_or_create(user_id=conversation.owner_id)
    earlier = (
        Message.objects.filter(conversation=conversation, created_at__lt=message.created_at)
        .exclude(content="")
        .order_by("-created_at")
        .values_list("role", "content")[:history_limit]
    )
    reply = Message.objects.filter(reply_to=message).first() if duplicate else None
    return TurnContext(
        user_id=conversation.owner_id,
        conversation_id=conversation.id,
        conversation_created=created,
        title=conversation.title,
        client_id=message.client_id or uuid.uuid4(),
        user_message_id=message.id,
        message_id=reply.id if reply else uuid.uuid5(message.id, "reply"),
        content=message.content,
        persona=_persona_info(conversation.persona),
        profile=ProfileInfo(display_name=profile.display_name, about=profile.about),
        history=tuple(HistoryItem(role=r, content=c) for r, c in reversed(list(earlier))),
        duplicate=duplicate,
        existing_reply=_reply_info(reply) if reply else None,
    )


@transaction.atomic
def reply_save(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    error: str,
) -> ReplyInfo | None:
    """Insert the assistant's reply once, and return the row as saved.

    If the reply was saved before (a recovering worker, a retried save), the earlier row
    stands and is returned, so `chat.done` always carries what the database holds. None when
    the conversation was deleted meanwhile.
    """
    # The update doubles as the check that the conversation still exists.
    if not Conversation.objects.filter(id=conversation_id).update(updated_at=timezone.now()):
        return None
    reply, _ = Message.objects.get_or_create(
        id=message_id,
        defaults={
            "conversation_id": conversation_id,
            "reply_to_id": user_message_id,
            "role": Message.Role.ASSISTANT,
            "content": content,
            "status": status,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "error": error[:500],
        },
    )
    return _reply_info(reply)


def reply_find(*, user_message_id: uuid.UUID) -> ReplyInfo | None:
    reply = Message.objects.filter(reply_to_id=user_message_id).first()
    return _reply_info(reply) if reply else None


def conversation_title_replace(*, conversation_id: uuid.UUID, title: str, only_if: str) -> bool:
    """Set a generated title, unless the title changed since (the user renamed it)."""
    updated = Conversation.objects.filter(id=conversation_id, title=only_if).update(title=title)
    return updated == 1
