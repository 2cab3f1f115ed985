"""Pure: a turn's context becomes a provider request."""

from __future__ import annotations

from django.conf import settings

from conversations.context import HistoryItem, TurnContext
from conversations.llm.base import ChatMessage, ProviderRequest
from conversations.titles_heuristic import title_from_message

__all__ = ["build_request", "system_instruction", "title_from_message", "trim_history"]


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
        if used + len(item.content) > budget_chars:
            break
        kept.append(item)
        used += len(item.content)
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept)


def build_request(ctx: TurnContext) -> ProviderRequest:
    history = trim_history(
        ctx.history, budget_chars=settings.HISTORY_MAX_CHARS, newest_chars=len(ctx.content)
    )
    messages = [ChatMessage(role=item.role, content=item.content) for item in history]
    messages.append(ChatMessage(role="user", content=ctx.content))
    return ProviderRequest(
        system=system_instruction(ctx),
        messages=tuple(messages),
        model=ctx.persona.model,
        temperature=ctx.persona.temperature,
        persona_name=ctx.persona.name,
        persona_description=ctx.persona.description,
        user_name=ctx.profile.display_name,
    )
