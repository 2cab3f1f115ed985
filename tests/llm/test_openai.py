"""OpenAIProvider through the real openai SDK against a local chat/completions SSE server: what
only OpenAI has. What every provider shares is in test_providers.py."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk

from conversations.llm import ProviderRequest
from conversations.llm.openai import OpenAIProvider
from tests.llm.wire_servers import DATA_DIR, Script, WireServer, collect, load_events

EXPECTED = "Arr, the treasure lies buried on Skull Island."


@pytest.mark.parametrize("name", sorted(p.name for p in DATA_DIR.glob("openai_*.json")))
def test_example_payloads_are_valid_sdk_chunks(name: str) -> None:
    for event in load_events(name):
        ChatCompletionChunk.model_validate(event)


def test_payload_validation_catches_a_missing_field() -> None:
    chunk = load_events("openai_stream_ok.json")[1]
    del chunk["choices"]
    with pytest.raises(pydantic.ValidationError):
        ChatCompletionChunk.model_validate(chunk)


@pytest.mark.asyncio
async def test_request_carries_persona_history_model_and_temperature(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(events=load_events("openai_stream_ok.json"))

    await collect(OpenAIProvider().stream(pirate_request))

    sent = openai_server.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are Captain Redbeard. Answer in pirate speak."},
        {"role": "user", "content": "Ahoy! Who are you?"},
        {"role": "assistant", "content": "Captain Redbeard, scourge of the seven seas!"},
        {"role": "user", "content": "Where is the treasure?"},
    ]
    assert sent.body["temperature"] == 0.3
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}


@pytest.mark.asyncio
async def test_a_persona_model_overrides_the_default(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(events=load_events("openai_stream_ok.json"))
    request = ProviderRequest(
        system="", messages=pirate_request.messages, model="llama3.2", temperature=1.2
    )

    await collect(OpenAIProvider().stream(request))

    sent = openai_server.last
    assert sent.body["model"] == "llama3.2"
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert sent.body["temperature"] == 1.2


@pytest.mark.asyncio
async def test_a_local_server_needs_no_key(
    openai_server: WireServer, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.OPENAI_API_KEY = ""
    openai_server.script = Script(events=load_events("openai_stream_ok.json"), api_key="not-needed")

    assert OpenAIProvider().configuration_error() is None
    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.text == EXPECTED
    assert openai_server.last.headers["authorization"] == "Bearer not-needed"
