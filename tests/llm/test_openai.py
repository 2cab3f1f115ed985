"""OpenAIProvider through the real openai SDK against a local chat/completions SSE server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk

from conversations.llm import ProviderRequest, Usage
from conversations.llm.openai import OpenAIProvider
from tests.llm.wire_servers import (
    DATA_DIR,
    Script,
    WireServer,
    assert_closed_before_the_loop_runs_again,
    collect,
    load_events,
    refused_url,
    unanswered_url,
)

EXPECTED = "Arr, the treasure lies buried on Skull Island."
# The role chunk comes first; events[1] carries the first text.
FIRST_TEXT = 1


def host(server: WireServer) -> str:
    return server.base_url.removeprefix("http://")


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
async def test_reply_streams_in_pieces_and_reports_usage(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(events=load_events("openai_stream_ok.json"))

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is None
    assert reply.deltas == ["Arr, the treasure", " lies buried", " on Skull Island."]
    assert reply.text == EXPECTED
    assert reply.usage == Usage(input_tokens=31, output_tokens=9)


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
async def test_content_filter_keeps_the_text_received_before_it(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(events=load_events("openai_content_filter.json"))

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.text == "Arr, I'll tell ye how"
    assert reply.error is not None
    assert reply.error.message == "The model declined to answer (content filter)."
    assert not reply.error.retryable
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_transient_failure_before_the_first_token_is_retried(
    openai_server: WireServer, pirate_request: ProviderRequest, status: int
) -> None:
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), fail_first=2, fail_status=status
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is None
    assert reply.text == EXPECTED
    assert len(openai_server.requests) == 3


@pytest.mark.asyncio
async def test_retries_stop_after_two(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), fail_first=3, fail_status=429
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "is rate limiting requests (HTTP 429). Try again shortly."
    )
    assert len(openai_server.requests) == 3


@pytest.mark.asyncio
async def test_unknown_model_is_explained_and_not_retried(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        fail_first=1,
        fail_status=404,
        fail_message='model "llama9" not found, try pulling it first',
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "answered 404 Not Found: check the model name and the base URL."
    )
    assert not reply.error.retryable
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
async def test_refused_request_shows_the_servers_reason(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        fail_first=1, fail_status=400, fail_message="temperature must be at most 2."
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "refused the request (HTTP 400): temperature must be at most 2."
    )
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
async def test_failure_after_text_was_sent_is_not_retried(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), drop_after=FIRST_TEXT + 1
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == (
        f"The connection to the OpenAI-compatible server at {host(openai_server)} broke off."
    )
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
async def test_no_first_token_in_time_fails_without_waiting_longer(
    openai_server: WireServer, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), pause_before={FIRST_TEXT: 3}
    )

    started = time.monotonic()
    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert time.monotonic() - started < 2
    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "did not start answering within 0.3 seconds."
    )
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
async def test_silence_mid_reply_fails_and_keeps_the_text(
    openai_server: WireServer, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_IDLE_TIMEOUT = 0.3
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), pause_before={FIRST_TEXT + 1: 3}
    )

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "stopped sending text for 0.3 seconds; "
        "the reply was cut short."
    )
    assert len(openai_server.requests) == 1
    assert_closed_before_the_loop_runs_again(openai_server)


@pytest.mark.asyncio
async def test_cancelling_the_reply_closes_the_upstream_connection(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), pause_before={FIRST_TEXT + 1: 30}
    )
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in OpenAIProvider().stream(pirate_request):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert_closed_before_the_loop_runs_again(openai_server)


@pytest.mark.asyncio
async def test_closing_the_stream_closes_the_upstream_connection(
    openai_server: WireServer, pirate_request: ProviderRequest
) -> None:
    openai_server.script = Script(
        events=load_events("openai_stream_ok.json"), pause_before={FIRST_TEXT + 1: 30}
    )

    stream = OpenAIProvider().stream(pirate_request)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == "Arr, the treasure"

    assert_closed_before_the_loop_runs_again(openai_server)


@pytest.mark.asyncio
async def test_bad_api_key_is_explained_and_not_retried(
    openai_server: WireServer,
    pirate_request: ProviderRequest,
    limits: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits.OPENAI_API_KEY = "wrong-key"
    openai_server.script = Script(events=load_events("openai_stream_ok.json"))

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        f"The OpenAI-compatible server at {host(openai_server)} "
        "rejected the API key (HTTP 401); ask an administrator."
    )
    # The setting to fix is named in the log only.
    assert "OPENAI_API_KEY" in caplog.text
    assert not reply.error.retryable
    assert len(openai_server.requests) == 1


@pytest.mark.asyncio
async def test_unreachable_server_is_retried_then_explained(
    limits: Any, pirate_request: ProviderRequest
) -> None:
    limits.OPENAI_API_KEY = "test-key"
    limits.OPENAI_BASE_URL = f"{refused_url()}/v1"
    host = limits.OPENAI_BASE_URL.removeprefix("http://").removesuffix("/v1")

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == f"Could not connect to the OpenAI-compatible server at {host}."
    assert reply.error.retryable


@pytest.mark.asyncio
async def test_connect_timeout_applies_to_connecting_only(
    limits: Any, pirate_request: ProviderRequest
) -> None:
    limits.LLM_CONNECT_TIMEOUT = 0.2
    limits.OPENAI_API_KEY = "test-key"

    with unanswered_url() as url:
        limits.OPENAI_BASE_URL = f"{url}/v1"
        started = time.monotonic()
        reply = await collect(OpenAIProvider().stream(pirate_request))

    # Three attempts of 0.2 s each, far below the 5 s first-token deadline.
    assert time.monotonic() - started < 2
    assert reply.error is not None
    assert reply.error.message == (
        f"Could not connect to the OpenAI-compatible server at {url.removeprefix('http://')} "
        "in time."
    )


def test_missing_key_without_a_server_is_a_configuration_error(settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""

    problem = OpenAIProvider().configuration_error()

    assert problem is not None
    assert "OPENAI_API_KEY" in problem
    assert "OPENAI_BASE_URL" in problem


@pytest.mark.asyncio
async def test_streaming_without_a_key_tells_the_user_to_ask_an_administrator(
    settings: Any, pirate_request: ProviderRequest, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""

    reply = await collect(OpenAIProvider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == "The model is not configured; ask an administrator."
    assert "OPENAI_API_KEY" not in reply.error.message
    detail = OpenAIProvider().configuration_error()
    assert detail is not None
    assert detail in caplog.text


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
