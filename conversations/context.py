"""Plain values that cross from the database step to the streaming step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class PersonaInfo:
    slug: str
    name: str
    description: str
    system_prompt: str
    avatar: str
    provider: str
    model: str
    temperature: float
    accepts_images: bool = True


@dataclass(frozen=True)
class AttachmentInfo:
    """An upload on a user message: its text is here, an image's bytes are read from
    storage (by `file`) after the transaction, before streaming."""

    id: uuid.UUID
    name: str
    kind: str  # "image", "text" or "pdf"
    content_type: str
    file: str  # the storage name
    text: str = ""
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ProfileInfo:
    display_name: str
    about: str


@dataclass(frozen=True)
class HistoryItem:
    role: str
    content: str
    attachments: tuple[AttachmentInfo, ...] = ()


@dataclass(frozen=True)
class ReplyInfo:
    """A reply that is already saved (for an idempotent re-send)."""

    message_id: uuid.UUID
    content: str
    status: str
    error: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True)
class TurnContext:
    """Everything a turn needs after its first transaction. No ORM object gets past here."""

    user_id: int
    conversation_id: uuid.UUID
    title: str
    client_id: uuid.UUID
    user_message_id: uuid.UUID
    message_id: uuid.UUID  # the id the reply will be saved under
    content: str
    persona: PersonaInfo
    profile: ProfileInfo
    history: tuple[HistoryItem, ...]  # older messages, oldest first, without this one
    duplicate: bool = False  # the client re-sent a client_id we already saved
    existing_reply: ReplyInfo | None = None
    age: float = 0.0  # seconds since the request's row was saved (inf: a regenerate's has none)
    user_parent_id: uuid.UUID | None = None  # the reply the user message follows
    regenerated: bool = False  # a new version of the reply to an earlier message
    attachments: tuple[AttachmentInfo, ...] = ()  # on this turn's user message
    # This turn gave the conversation its first title, the heuristic one (a new conversation,
    # or one made empty by the API): it is announced, and the model is asked for a better one.
    titled: bool = False
