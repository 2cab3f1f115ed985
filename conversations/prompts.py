"""Pure: a turn's context becomes a provider request."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from django.conf import settings

from conversations.context import AttachmentInfo, HistoryItem, TurnContext
from conversations.llm.base import ChatMessage, ImagePart, ProviderRequest
from conversations.titles_heuristic import title_from_message

__all__ = [
    "build_request",
    "prompt_images",
    "system_instruction",
    "title_from_message",
    "trim_history",
]

# Images sent with one turn, newest first: older ones are named in the text instead, so a
# long chat about screenshots does not re-send (and re-read) every one of them each turn.
MAX_PROMPT_IMAGES = 8


def system_instruction(ctx: TurnContext) -> str:
    parts = [ctx.persona.system_prompt.strip()]
    about_user = []
    if ctx.profile.display_name:
        about_user.append(f"The user's name is {ctx.profile.display_name}.")
    if ctx.profile.about:
        about_user.append(f"What they told us about themselves: {ctx.profile.about.strip()}")
    if about_user:
        parts.append(
            "About the user (use it to personalise answers; never reveal it verbatim "
            "unless asked):\n" + "\n".join(about_user)
        )
    return "\n\n".join(part for part in parts if part)


def trim_history(
    history: tuple[HistoryItem, ...], *, budget_chars: int, newest_chars: int
) -> tuple[HistoryItem, ...]:
    """Drop the oldest turns until history plus the newest message fit the budget.

    The system prompt and the newest user message are never trimmed; a reply is never kept
    without the message it answers.
    """
    kept: list[HistoryItem] = []
    used = newest_chars
    for item in reversed(history):
        size = len(item.content) + sum(len(_file_text(a)) for a in item.attachments)
        if used + size > budget_chars:
            break
        kept.append(item)
        used += size
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept)


def _file_text(attachment: AttachmentInfo) -> str:
    """What the model reads of a text file or a PDF: its text, named, within half the
    history budget (a 200-page PDF must not crowd out the conversation)."""
    if attachment.kind == "image":
        return ""
    limit = settings.HISTORY_MAX_CHARS // 2
    text = attachment.text
    if len(text) > limit:
        text = text[:limit] + "\n[… the rest of the file is left out]"
    name = attachment.name.replace('"', "'")
    return f'<file name="{name}">\n{text}\n</file>'


def _content(content: str, attachments: tuple[AttachmentInfo, ...]) -> str:
    files = [_file_text(a) for a in attachments if a.kind != "image"]
    return "\n\n".join([*files, content] if content else files)


def _trimmed(ctx: TurnContext) -> tuple[HistoryItem, ...]:
    newest = len(_content(ctx.content, ctx.attachments))
    return trim_history(ctx.history, budget_chars=settings.HISTORY_MAX_CHARS, newest_chars=newest)


def prompt_images(ctx: TurnContext) -> list[AttachmentInfo]:
    """The images the turn's request carries, whose bytes are read before it is built: the
    newest MAX_PROMPT_IMAGES of the kept history and the message, if the persona reads
    images at all."""
    if not ctx.persona.accepts_images:
        return []
    items = [*_trimmed(ctx), HistoryItem(role="user", content="", attachments=ctx.attachments)]
    images = [a for item in items for a in item.attachments if a.kind == "image"]
    return images[-MAX_PROMPT_IMAGES:]


def _message(
    role: str,
    content: str,
    attachments: tuple[AttachmentInfo, ...],
    images: Mapping[uuid.UUID, bytes],
) -> ChatMessage:
    parts = []
    notes = []
    for a in attachments:
        if a.kind != "image":
            continue
        if a.id in images:
            parts.append(ImagePart(a.name, a.content_type, images[a.id], a.width, a.height))
        else:  # an older image, or one storage could not give back
            notes.append(f"[image: {a.name}]")
    text = _content(content, attachments)
    return ChatMessage(
        role=role,
        content="\n".join([*notes, text]) if notes else text,
        images=tuple(parts),
        file_names=tuple(a.name for a in attachments if a.kind != "image"),
    )


def build_request(
    ctx: TurnContext, images: Mapping[uuid.UUID, bytes] | None = None
) -> ProviderRequest:
    """`images`: the bytes of prompt_images(ctx), by upload id, read from storage."""
    found = images or {}
    messages = [_message(i.role, i.content, i.attachments, found) for i in _trimmed(ctx)]
    messages.append(_message("user", ctx.content, ctx.attachments, found))
    return ProviderRequest(
        system=system_instruction(ctx),
        messages=tuple(messages),
        model=ctx.persona.model,
        temperature=ctx.persona.temperature,
        persona_name=ctx.persona.name,
        persona_description=ctx.persona.description,
        user_name=ctx.profile.display_name,
    )
