"""Sync ORM functions: the only place chat code touches the database.

Each function is one short transaction and returns plain values. Async code calls them
through `conversations.db.db_call`, which gives the connection back to the pool before the
await returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from importlib import import_module

from channels.auth import get_user
from django.conf import settings
from django.contrib.auth import get_user_model
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
from conversations.errors import Invalid, NotFound, SessionEnded
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


def session_user_id(*, session_key: str | None) -> int | None:
    """The user a session signs in, checked as Django checks a request (the session exists,
    the user is active, the password has not changed since), or None."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user.func({"session": store})
    return int(user.pk) if user.is_authenticated else None


def _check_user(user_id: int, session_key: str | None) -> None:
    if session_key is not None:
        valid = session_user_id(session_key=session_key) == user_id
    else:  # the HTTP API: the request's session was checked moments ago
        valid = get_user_model().objects.filter(id=user_id, is_active=True).exists()
    if not valid:
        raise SessionEnded("Your session has ended; sign in again.")


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
    session_key: str | None = None,
) -> TurnContext:
    """Save the user's message (once per user and client_id) and read what the reply needs.

    `check_persona` may refuse the turn (e.g. its provider is misconfigured) by raising;
    the transaction then rolls back and nothing is saved. `session_key` is the socket's
    session: a socket outlives logout until it hears of it, so the turn checks it here.
    """
    _check_user(user_id, session_key)
    existing = Message.objects.filter(
        owner_id=user_id, role=Message.Role.USER, client_id=client_id
    ).first()
    if existing is not None:
        return _duplicate(existing, conversation_id, history_limit)

    if conversation_id is None:
        persona = persona_for_new_conversation(persona_slug)
        conversation = None
    else:
        # The row lock serialises concurrent turns on one conversation across workers.
        conversation = (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("persona")
            .filter(id=conversation_id, owner_id=user_id)
            .first()
        )
        if conversation is None:
            raise NotFound("No such conversation.")
        persona = conversation.persona
    if check_persona is not None:
        check_persona(_persona_info(persona))
    try:
        with transaction.atomic():
            if conversation is None:
                conversation = Conversation.objects.create(
                    owner_id=user_id, persona=persona, title=title_from_message(content)
                )
            message = Message.objects.create(
                conversation=conversation,
                owner_id=user_id,
                role=Message.Role.USER,
                content=content,
                client_id=client_id,
            )
    except IntegrityError:
        # A concurrent send of the same client_id (another socket, worker or the HTTP API)
        # committed first; the savepoint took back our conversation, if we made one.
        existing = Message.objects.get(
            owner_id=user_id, role=Message.Role.USER, client_id=client_id
        )
        return _duplicate(existing, conversation_id, history_limit)
    if conversation_id is not None:
        Conversation.objects.filter(id=conversation.id).update(updated_at=timezone.now())
    return _context_for(message, created=conversation_id is None, history_limit=history_limit)


def _duplicate(
    message: Message, conversation_id: uuid.UUID | None, history_limit: int
) -> TurnContext:
    if conversation_id is not None and message.conversation_id != conversation_id:
        raise Invalid("This client_id was already used for another message.")
    return _context_for(message, duplicate=True, history_limit=history_limit)


def reply_id_for(user_message_id: uuid.UUID) -> uuid.UUID:
    """The id the reply to a user message is saved under, whoever saves it: derived, so it
    can only ever be saved once."""
    return uuid.uuid5(user_message_id, "reply")


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
        message_id=reply.id if reply else reply_id_for(message.id),
        content=message.content,
        persona=_persona_info(conversation.persona),
        profile=ProfileInfo(display_name=profile.display_name, about=profile.about),
        history=tuple(HistoryItem(role=r, content=c) for r, c in reversed(list(earlier))),
        duplicate=duplicate,
        existing_reply=_reply_info(reply) if reply else None,
        age=(timezone.now() - message.created_at).total_seconds(),
    )


def message_sent(*, user_id: int, client_id: uuid.UUID) -> bool:
    return Message.objects.filter(
        owner_id=user_id, role=Message.Role.USER, client_id=client_id
    ).exists()


def turn_context(*, user_id: int, client_id: uuid.UUID, history_limit: int) -> TurnContext | None:
    """The turn a user's message of this client_id began, as a re-send finds it."""
    message = Message.objects.filter(
        owner_id=user_id, role=Message.Role.USER, client_id=client_id
    ).first()
    if message is None:
        return None
    return _context_for(message, duplicate=True, history_limit=history_limit)


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
