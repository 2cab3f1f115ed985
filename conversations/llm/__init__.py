"""Choosing a provider: `LLM_PROVIDER` is the default, a persona may name its own."""

from __future__ import annotations

from django.conf import settings

from conversations.llm.base import (
    PUBLIC_CONFIGURATION_ERROR,
    ChatMessage,
    Completion,
    Provider,
    ProviderError,
    ProviderRequest,
    Usage,
)
from conversations.llm.demo import DemoProvider

__all__ = [
    "PROVIDER_NAMES",
    "PUBLIC_CONFIGURATION_ERROR",
    "ChatMessage",
    "Completion",
    "Provider",
    "ProviderError",
    "ProviderRequest",
    "Usage",
    "get_provider",
]

PROVIDER_NAMES = ("demo", "gemini", "openai")


def get_provider(name: str = "") -> Provider:
    """The provider called `name`, or the configured default. Raises ProviderError."""
    chosen = name or settings.LLM_PROVIDER
    if chosen == "demo":
        return DemoProvider()
    if chosen == "gemini":
        from conversations.llm.gemini import GeminiProvider

        return GeminiProvider()
    if chosen == "openai":
        from conversations.llm.openai import OpenAIProvider

        return OpenAIProvider()
    raise ProviderError(
        f"Unknown LLM provider {chosen!r}; choose one of {', '.join(PROVIDER_NAMES)}."
    )
