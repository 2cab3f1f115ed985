"""GeminiProvider through the real google-genai SDK against a local server speaking Gemini's SSE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pydantic
import pytest
from google.genai import types

from conversations.llm import ProviderRequest, Usage
from conversations.llm.gemini import GeminiProvider
from tests.llm.wire_servers import (
    DATA_DIR,
    GeminiDialect,
    Script,
    WireServer,
    assert_closed_before_the_loop_runs_again,
    collect,
    load_events,
    refused_url,
    unanswered_url,
)

EXPECTED = "Arr, the treasure lies buried on Skull Island."


@pytest.mark.parametrize("name", sorted(p.name for p in DATA_DIR.glob("gemini_*.json")))
def test_example_payloads_are_valid_sdk_responses(name: str) -> None:
    for event in load_events(name):
        types.GenerateContentResponse.model_validate(event)


def test_payload_validation_catches_a_misspelled_field() -> None:
    with pytest.raises(pydantic.ValidationError):
        types.GenerateContentResponse.model_validate({"candidate": []})


@pytest.mark.asyncio
async def test_reply_streams_in_pieces_and_reports_usage(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"))

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is None
    assert reply.deltas == ["Arr, the treasure", " lies buried", " on Skull Island."]
    assert reply.text == EXPECTED
    assert reply.usage == Usage(input_tokens=24, output_tokens=11)


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


@pytest.mark.asyncio
async def test_safety_stop_keeps_the_text_received_before_it(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_safety_block.json"))

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.text == "Arr, I'll tell ye how"
    assert reply.error is not None
    assert reply.error.message == "The model declined to answer (safety filter: SAFETY)."
    assert len(gemini_server.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_transient_failure_before_the_first_token_is_retried(
    gemini_server: WireServer, pirate_request: ProviderRequest, status: int
) -> None:
    gemini_server.script = Script(
        events=load_events("gemini_stream_ok.json"), fail_first=2, fail_status=status
    )

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is None
    assert reply.text == EXPECTED
    assert len(gemini_server.requests) == 3


@pytest.mark.asyncio
async def test_retries_stop_after_two(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(
        events=load_events("gemini_stream_ok.json"), fail_first=3, fail_status=503
    )

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == "Gemini is unavailable right now (HTTP 503). Try again shortly."
    assert len(gemini_server.requests) == 3


@pytest.mark.asyncio
async def test_refused_request_is_explained_and_not_retried(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(
        fail_first=1,
        fail_status=400,
        fail_message="User location is not supported for the API use.",
    )

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        "Gemini refused the request (HTTP 400): User location is not supported for the API use."
    )
    assert not reply.error.retryable
    assert len(gemini_server.requests) == 1


@pytest.mark.asyncio
async def test_failure_after_text_was_sent_is_not_retried(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), drop_after=1)

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == "The connection to Gemini broke off."
    assert len(gemini_server.requests) == 1


@pytest.mark.asyncio
async def test_no_first_token_in_time_fails_without_waiting_longer(
    gemini_server: WireServer, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), first_event_delay=3)

    started = time.monotonic()
    reply = await collect(GeminiProvider().stream(pirate_request))

    assert time.monotonic() - started < 2
    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == "Gemini did not start answering within 0.3 seconds."
    assert len(gemini_server.requests) == 1


@pytest.mark.asyncio
async def test_silence_mid_reply_fails_and_keeps_the_text(
    gemini_server: WireServer, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_IDLE_TIMEOUT = 0.3
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), pause_before={1: 3})

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == (
        "Gemini stopped sending text for 0.3 seconds; the reply was cut short."
    )
    assert len(gemini_server.requests) == 1
    assert await asyncio.to_thread(gemini_server.client_closed.wait, 5)


@pytest.mark.asyncio
async def test_cancelling_the_reply_closes_the_upstream_connection(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), pause_before={1: 30})
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in GeminiProvider().stream(pirate_request):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert_closed_before_the_loop_runs_again(gemini_server)


@pytest.mark.asyncio
async def test_closing_the_stream_closes_the_upstream_connection(
    gemini_server: WireServer, pirate_request: ProviderRequest
) -> None:
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), pause_before={1: 30})

    stream = GeminiProvider().stream(pirate_request)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == "Arr, the treasure"

    assert_closed_before_the_loop_runs_again(gemini_server)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 403])
async def test_bad_api_key_is_explained_and_not_retried(
    gemini_server: WireServer,
    pirate_request: ProviderRequest,
    limits: Any,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits.GEMINI_API_KEY = "wrong-key"
    gemini_server.script = Script(events=load_events("gemini_stream_ok.json"), auth_status=status)

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is not None
    # The user is told who can fix it; the setting to fix is named in the log only.
    assert reply.error.message == (
        f"Gemini rejected the API key (HTTP {status}); ask an administrator."
    )
    assert "GEMINI_API_KEY" in caplog.text
    assert "wrong-key" not in reply.error.message
    assert not reply.error.retryable
    assert len(gemini_server.requests) == 1


@pytest.mark.asyncio
async def test_unreachable_server_is_retried_then_explained(
    limits: Any, pirate_request: ProviderRequest
) -> None:
    limits.GEMINI_API_KEY = "test-key"
    limits.GEMINI_BASE_URL = refused_url()

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == "Could not connect to Gemini."
    assert reply.error.retryable


@pytest.mark.asyncio
async def test_connect_timeout_applies_to_connecting_only(
    limits: Any, pirate_request: ProviderRequest
) -> None:
    limits.LLM_CONNECT_TIMEOUT = 0.2
    limits.GEMINI_API_KEY = "test-key"

    with unanswered_url() as url:
        limits.GEMINI_BASE_URL = url
        started = time.monotonic()
        reply = await collect(GeminiProvider().stream(pirate_request))

    # Three attempts of 0.2 s each, far below the 5 s first-token deadline.
    assert time.monotonic() - started < 2
    assert reply.error is not None
    assert reply.error.message == "Could not connect to Gemini in time."


def test_missing_key_is_a_configuration_error(settings: Any) -> None:
    settings.GEMINI_API_KEY = ""

    problem = GeminiProvider().configuration_error()

    assert problem is not None
    assert "GEMINI_API_KEY" in problem


@pytest.mark.asyncio
async def test_streaming_without_a_key_tells_the_user_to_ask_an_administrator(
    settings: Any, pirate_request: ProviderRequest, caplog: pytest.LogCaptureFixture
) -> None:
    settings.GEMINI_API_KEY = ""

    reply = await collect(GeminiProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == "The model is not configured; ask an administrator."
    assert "GEMINI_API_KEY" not in reply.error.message
    detail = GeminiProvider().configuration_error()
    assert detail is not None
    assert detail in caplog.text


def test_configured_key_is_enough(settings: Any) -> None:
    settings.GEMINI_API_KEY = "some-key"
    settings.GEMINI_BASE_URL = ""

    assert GeminiProvider().configuration_error() is None
