"""Pure: a turn's context becomes a provider request."""

from __future__ import annotations

from conversations.context import TurnContext
from conversations.llm.base import ChatMessage, ProviderRequest


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


def build_request(ctx: TurnContext) -> ProviderRequest:
    messages = [ChatMessage(role=item.role, content=item.content) for item in ctx.history]
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


def title_from_message(content: str, limit: int = 60) -> str:
    """A heuristic title: the first line of the first message, cut at a word."""
    line = " ".join(content.strip().split("\n", 1)[0].split())
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(" ,.;:") + "…"
