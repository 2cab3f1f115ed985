"""Fixtures for the provider tests: local wire-format servers and tight limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conversations.llm import ChatMessage, ProviderRequest
from tests.llm.wire_servers import GeminiDialect, OpenAIDialect, WireServer


@pytest.fixture
def limits(settings: Any) -> Any:
    """Deadlines that pass in well under a second, and near-instant backoff."""
    settings.LLM_CONNECT_TIMEOUT = 2.0
    settings.LLM_FIRST_TOKEN_TIMEOUT = 5.0
    settings.LLM_IDLE_TIMEOUT = 5.0
    settings.LLM_RETRY_BACKOFF = 0.01
    return settings


@pytest.fixture
def gemini_server(limits: Any) -> Iterator[WireServer]:
    server = WireServer(GeminiDialect()).start()
    limits.GEMINI_API_KEY = "test-key"
    limits.GEMINI_BASE_URL = server.base_url
    limits.GEMINI_MODEL = "gemini-2.5-flash"
    yield server
    server.stop()


@pytest.fixture
def openai_server(limits: Any) -> Iterator[WireServer]:
    server = WireServer(OpenAIDialect()).start()
    limits.OPENAI_API_KEY = "test-key"
    limits.OPENAI_BASE_URL = f"{server.base_url}/v1"
    limits.OPENAI_MODEL = "gpt-4o-mini"
    yield server
    server.stop()


@pytest.fixture
def pirate_request() -> ProviderRequest:
    return ProviderRequest(
        system="You are Captain Redbeard. Answer in pirate speak.",
        messages=(
            ChatMessage("user", "Ahoy! Who are you?"),
            ChatMessage("assistant", "Captain Redbeard, scourge of the seven seas!"),
            ChatMessage("user", "Where is the treasure?"),
        ),
        temperature=0.3,
    )
