"""Naming a new conversation with a short model call; the heuristic title stays on failure."""

from __future__ import annotations

import asyncio
import logging
import uuid

from channels.layers import get_channel_layer
from django.conf import settings

from conversations import services
from conversations.context import TurnContext
from conversations.db import db_call
from conversations.llm.base import ChatMessage, Provider, ProviderError, ProviderRequest
from conversations.text import one_line, visible

logger = logging.getLogger(__name__)

TITLE_INSTRUCTION = (
    "You name chat conversations. Answer with a title of at most six words that says what "
    "the user's message is about. No quotes, no final punctuation, nothing else."
)
TITLE_MAX_CHARS = 80


def title_request(ctx: TurnContext) -> ProviderRequest:
    return ProviderRequest(
        system=TITLE_INSTRUCTION,
        # A message of files alone is named by its files, as its first title was.
        messages=(ChatMessage(role="user", content=_about(ctx)[:2000]),),
        model=ctx.persona.model,
        temperature=0.2,
        purpose="title",
    )


def _about(ctx: TurnContext) -> str:
    return ctx.content or ", ".join(attachment.name for attachment in ctx.attachments)


def clean_title(text: str) -> str:
    """The first line, without markdown, quotes, a "Title:" label or a final stop."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    previous = None
    while line != previous:
        previous = line
        line = one_line(line).lstrip("#").strip().strip("\"'`*_").strip().rstrip(".")
        if line.lower().startswith("title:"):
            line = line[len("title:") :]
    line = line[:TITLE_MAX_CHARS].strip()
    return line if visible(line) else ""


async def announce_title(user_id: int, conversation_id: uuid.UUID, title: str) -> None:
    frame = {
        "type": "conversation.updated",
        "conversation_id": str(conversation_id),
        "title": title,
    }
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(f"user.{user_id}", {"type": "conversation.updated", "frame": frame})
    except Exception:
        logger.warning("could not announce a new title", exc_info=True)


async def title_generate(ctx: TurnContext, provider: Provider) -> str | None:
    """Ask the model for a title and save it, unless the user renamed the chat meanwhile."""
    try:
        completion = await asyncio.wait_for(
            provider.complete(title_request(ctx)), settings.TITLE_TIMEOUT_SECONDS
        )
    except (ProviderError, TimeoutError) as exc:
        logger.info("title generation failed, keeping the heuristic title: %s", exc)
        return None
    title = clean_title(completion.text)
    if not title or title == ctx.title:
        return None
    changed = await db_call(services.conversation_title_replace)(
        conversation_id=ctx.conversation_id, title=title, only_if=ctx.title
    )
    if not changed:
        return None
    await announce_title(ctx.user_id, ctx.conversation_id, title)
    return title
