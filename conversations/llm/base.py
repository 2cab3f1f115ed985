"""The provider interface: every model sits behind `Provider.stream()` and `ProviderError`."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


# What a user is told when a provider cannot be used as configured. The detail, which names
# settings, is for the log, system checks and /readyz's operators: configuration_error().
PUBLIC_CONFIGURATION_ERROR = "The model is not configured; ask an administrator."


class ProviderError(Exception):
    """A provider failed or refused, after the adapter's own retries before the first token.

    `retryable` tells whether the same request may work later (an outage, not a refusal);
    the chat core does not retry again by itself.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class ImagePart:
    """An image the user attached, as stored (re-encoded at upload)."""

    name: str
    mime_type: str
    data: bytes
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" or "assistant"
    # Text files and PDFs attached to the message are already in the content, by name.
    content: str
    images: tuple[ImagePart, ...] = ()
    file_names: tuple[str, ...] = ()  # the files whose text the content holds


@dataclass(frozen=True)
class ProviderRequest:
    """Everything a provider may know about a turn: plain values, never ORM objects."""

    system: str
    messages: tuple[ChatMessage, ...]
    model: str = ""
    temperature: float = 0.7
    persona_name: str = ""
    persona_description: str = ""
    user_name: str = ""
    purpose: str = "reply"  # or "title": a short, non-streamed naming call


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class Completion:
    text: str
    usage: Usage = field(default_factory=Usage)


class Provider:
    """Stream yields text deltas (str) and, last, at most one `Usage`."""

    name = "base"

    def configuration_error(self) -> str | None:
        """A sentence for operators naming what is missing, or None when the provider can be
        used. Users get PUBLIC_CONFIGURATION_ERROR instead."""
        return None

    def check_configured(self) -> None:
        """Log what is missing and raise ProviderError(PUBLIC_CONFIGURATION_ERROR)."""
        if problem := self.configuration_error():
            logger.error("LLM provider %r cannot be used: %s", self.name, problem)
            raise ProviderError(PUBLIC_CONFIGURATION_ERROR)

    def stream(self, request: ProviderRequest) -> AsyncGenerator[str | Usage, None]:
        raise NotImplementedError

    async def complete(self, request: ProviderRequest) -> Completion:
        parts: list[str] = []
        usage = Usage()
        async for event in self.stream(request):
            if isinstance(event, Usage):
                usage = event
            else:
                parts.append(event)
        return Completion(text="".join(parts), usage=usage)
