"""GeminiProvider through the real google-genai SDK against a local server speaking Gemini's SSE:
what only Gemini has. What every provider shares is in test_providers.py."""

from __future__ import annotations

import pydantic
import pytest
from google.genai import types

from conversations.llm import ProviderRequest
from conversations.llm.gemini import GeminiProvider
from tests.llm.wire_servers import (
    DATA_DIR,
    GeminiDialect,
    Script,
    WireServer,
    collect,
    load_events,
)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA_DIR.glob("gemini_*.json")))
def test_example_payloads_are_valid_sdk_responses(name: str) -> None:
    for event in load_events(name):
        types.GenerateContentResponse.model_validate(event)


def test_payload_validation_catches_a_misspelled_field() -> None:
    with pytest.raises(pydantic.ValidationError):
        types.GenerateContentResponse.model_validate({"candidate": []})


@pytest.mark.asyncio
async def test_request_carries_persona_history_model_and_temperature(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"))

    await collect(GeminiProvider().stream(pirate_request))

    sent = gemini_server.last
    assert GeminiDialect.version(sent.path) == "v1"
    assert GeminiDialect.model(sent.path) == "gemini-2.5-flash"
    assert sent.query == {"alt": ["sse"]}
    assert sent.headers["x-goog-api-key"] == "test-key"
    assert sent.body["systemInstruction"]["parts"] == [
        {"text": "You are Captain Redbeard. Answer in pirate speak."}
    ]
    assert [(c["role"], c["parts"][0]["text"]) for c in sent.body["contents"]] == [
        ("user", "Ahoy! Who are you?"),
        ("model", "Captain Redbeard, scourge of the seven seas!"),
        ("user", "Where is the treasure?"),
    ]
    assert sent.body["generationConfig"]["temperature"] == 0.3


@pytest.mark.asyncio
async def test_a_persona_model_overrides_the_default(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"))
    request = ProviderRequest(
        system="", messages=pirate_request.messages, model="gemini-2.5-pro", temperature=1.2
    )

    await collect(GeminiProvider().stream(request))

    sent = gemini_server.last
    assert GeminiDialect.model(sent.path) == "gemini-2.5-pro"
    assert "systemInstruction" not in sent.body
    assert sent.body["generationConfig"]["temperature"] == 1.2


@pytest.mark.asyncio
async def test_blocked_prompt_ends_with_a_human_reason(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_prompt_blocked.json"))

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == (
        "The model declined to answer this message (safety filter: PROHIBITED_CONTENT)."
    )
    assert not reply.error.retryable
    assert len(gemini_server.requests) == 1
