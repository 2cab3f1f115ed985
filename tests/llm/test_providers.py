"""What every provider does the same way, through its real SDK against a local server speaking
its wire format: streaming, filters, retries, deadlines, closing the upstream, and keys.

Each test runs once per provider; what only one provider has is in test_gemini.py and
test_openai.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from conversations.llm import Provider, ProviderRequest, Usage
from conversations.llm.gemini import GeminiProvider
from conversations.llm.openai import OpenAIProvider
from tests.llm.wire_servers import (
    Script,
    WireServer,
    assert_closed_before_the_loop_runs_again,
    collect,
    load_events,
    refused_url,
    unanswered_url,
)

EXPECTED = "Arr, the treasure lies buried on Skull Island."


@dataclass
class Upstream:
    """One provider, the local server it talks to, and what that service's streams hold."""

    provider: Callable[[], Provider]
    server: WireServer
    settings: Any
    named: str  # how messages name the service; {host} is the host of its base URL
    ok: str  # example stream of a normal reply
    first_text: int  # index of the first event that carries text
    usage: Usage
    filtered: str  # example stream stopped by a filter after some text
    filtered_error: str
    refusal: str  # a reason the service gives with an HTTP 400
    key_setting: str
    base_url_setting: str
    api_root: str  # where the API sits under the server's URL
    needs: tuple[str, ...]  # settings of which at least one must be set to use the provider

    def reply(self, **script: Any) -> None:
        """Answer with the normal example stream, as `script` says."""
        self.server.script = Script(events=load_events(self.ok), **script)

    def point_at(self, url: str) -> None:
        setattr(self.settings, self.base_url_setting, url + self.api_root)

    @property
    def label(self) -> str:
        """The service as error messages name it mid-sentence."""
        host = urlsplit(getattr(self.settings, self.base_url_setting)).netloc
        return self.named.format(host=host)

    @property
    def subject(self) -> str:
        """The service as error messages name it at the start of a sentence."""
        return self.label[:1].upper() + self.label[1:]


@pytest.fixture(params=["gemini", "openai"])
def upstream(request: pytest.FixtureRequest, limits: Any) -> Upstream:
    server: WireServer = request.getfixturevalue(f"{request.param}_server")
    if request.param == "gemini":
        return Upstream(
            provider=GeminiProvider,
            server=server,
            settings=limits,
            named="Gemini",
            ok="gemini_stream_ok.json",
            first_text=0,
            usage=Usage(input_tokens=24, output_tokens=11),
            filtered="gemini_safety_block.json",
            filtered_error="The model declined to answer (safety filter: SAFETY).",
            refusal="User location is not supported for the API use.",
            key_setting="GEMINI_API_KEY",
            base_url_setting="GEMINI_BASE_URL",
            api_root="",
            needs=("GEMINI_API_KEY",),
        )
    return Upstream(
        provider=OpenAIProvider,
        server=server,
        settings=limits,
        named="the OpenAI-compatible server at {host}",
        ok="openai_stream_ok.json",
        # The role chunk comes first.
        first_text=1,
        usage=Usage(input_tokens=31, output_tokens=9),
        filtered="openai_content_filter.json",
        filtered_error="The model declined to answer (content filter).",
        refusal="temperature must be at most 2.",
        key_setting="OPENAI_API_KEY",
        base_url_setting="OPENAI_BASE_URL",
        api_root="/v1",
        needs=("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    )


@pytest.mark.asyncio
async def test_reply_streams_in_pieces_and_reports_usage(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.reply()

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is None
    assert reply.deltas == ["Arr, the treasure", " lies buried", " on Skull Island."]
    assert reply.text == EXPECTED
    assert reply.usage == upstream.usage


@pytest.mark.asyncio
async def test_filter_stop_keeps_the_text_received_before_it(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.server.script = Script(events=load_events(upstream.filtered))

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.text == "Arr, I'll tell ye how"
    assert reply.error is not None
    assert reply.error.message == upstream.filtered_error
    assert not reply.error.retryable
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_transient_failure_before_the_first_token_is_retried(
    upstream: Upstream, pirate_request: ProviderRequest, status: int
) -> None:
    upstream.reply(fail_first=2, fail_status=status)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is None
    assert reply.text == EXPECTED
    assert len(upstream.server.requests) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "trouble"),
    [(429, "is rate limiting requests"), (503, "is unavailable right now")],
    ids=["429", "503"],
)
async def test_retries_stop_after_two(
    upstream: Upstream, pirate_request: ProviderRequest, status: int, trouble: str
) -> None:
    upstream.reply(fail_first=3, fail_status=status)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == (
        f"{upstream.subject} {trouble} (HTTP {status}). Try again shortly."
    )
    assert reply.error.retryable
    assert len(upstream.server.requests) == 3


@pytest.mark.asyncio
async def test_unknown_model_is_explained_and_not_retried(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.server.script = Script(fail_first=1, fail_status=404)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        f"{upstream.subject} answered 404 Not Found: check the model name and the base URL."
    )
    assert not reply.error.retryable
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
async def test_refused_request_shows_the_services_reason_and_is_not_retried(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.server.script = Script(fail_first=1, fail_status=400, fail_message=upstream.refusal)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == (
        f"{upstream.subject} refused the request (HTTP 400): {upstream.refusal}"
    )
    assert not reply.error.retryable
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
async def test_failure_after_text_was_sent_is_not_retried(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.reply(drop_after=upstream.first_text + 1)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == f"The connection to {upstream.label} broke off."
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
async def test_no_first_token_in_time_fails_without_waiting_longer(
    upstream: Upstream, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    upstream.reply(pause_before={upstream.first_text: 3})

    started = time.monotonic()
    reply = await collect(upstream.provider().stream(pirate_request))

    assert time.monotonic() - started < 2
    assert reply.deltas == []
    assert reply.error is not None
    assert reply.error.message == (
        f"{upstream.subject} did not start answering within 0.3 seconds."
    )
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
async def test_silence_mid_reply_fails_and_keeps_the_text(
    upstream: Upstream, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_IDLE_TIMEOUT = 0.3
    upstream.reply(pause_before={upstream.first_text + 1: 3})

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.text == "Arr, the treasure"
    assert reply.error is not None
    assert reply.error.message == (
        f"{upstream.subject} stopped sending text for 0.3 seconds; the reply was cut short."
    )
    assert len(upstream.server.requests) == 1
    assert_closed_before_the_loop_runs_again(upstream.server)


@pytest.mark.asyncio
async def test_cancelling_the_reply_closes_the_upstream_connection(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.reply(pause_before={upstream.first_text + 1: 30})
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in upstream.provider().stream(pirate_request):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert_closed_before_the_loop_runs_again(upstream.server)


@pytest.mark.asyncio
async def test_closing_the_stream_closes_the_upstream_connection(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.reply(pause_before={upstream.first_text + 1: 30})

    stream = upstream.provider().stream(pirate_request)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == "Arr, the treasure"

    assert_closed_before_the_loop_runs_again(upstream.server)


# Gemini answers a bad key with 400 API_KEY_INVALID (or 403 for keyless callers), OpenAI with 401.
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("upstream", "status"),
    [("gemini", 400), ("gemini", 403), ("openai", 401)],
    indirect=["upstream"],
)
async def test_bad_api_key_is_explained_and_not_retried(
    upstream: Upstream,
    pirate_request: ProviderRequest,
    limits: Any,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    setattr(limits, upstream.key_setting, "wrong-key")
    upstream.reply(auth_status=status)

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is not None
    # The user is told who can fix it; the setting to fix is named in the log only.
    assert reply.error.message == (
        f"{upstream.subject} rejected the API key (HTTP {status}); ask an administrator."
    )
    assert upstream.key_setting in caplog.text
    assert "wrong-key" not in reply.error.message
    assert not reply.error.retryable
    assert len(upstream.server.requests) == 1


@pytest.mark.asyncio
async def test_unreachable_server_is_retried_then_explained(
    upstream: Upstream, pirate_request: ProviderRequest
) -> None:
    upstream.point_at(refused_url())

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == f"Could not connect to {upstream.label}."
    assert reply.error.retryable


@pytest.mark.asyncio
async def test_connect_timeout_applies_to_connecting_only(
    upstream: Upstream, pirate_request: ProviderRequest, limits: Any
) -> None:
    limits.LLM_CONNECT_TIMEOUT = 0.2

    with unanswered_url() as url:
        upstream.point_at(url)
        started = time.monotonic()
        reply = await collect(upstream.provider().stream(pirate_request))

    # Three attempts of 0.2 s each, far below the 5 s first-token deadline.
    assert time.monotonic() - started < 2
    assert reply.error is not None
    assert reply.error.message == f"Could not connect to {upstream.label} in time."


def test_missing_key_is_a_configuration_error(upstream: Upstream, limits: Any) -> None:
    for name in upstream.needs:
        setattr(limits, name, "")

    problem = upstream.provider().configuration_error()

    assert problem is not None
    for name in upstream.needs:
        assert name in problem


@pytest.mark.asyncio
async def test_streaming_without_a_key_tells_the_user_to_ask_an_administrator(
    upstream: Upstream,
    pirate_request: ProviderRequest,
    limits: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in upstream.needs:
        setattr(limits, name, "")

    reply = await collect(upstream.provider().stream(pirate_request))

    assert reply.error is not None
    assert reply.error.message == "The model is not configured; ask an administrator."
    assert upstream.key_setting not in reply.error.message
    detail = upstream.provider().configuration_error()
    assert detail is not None
    assert detail in caplog.text
    assert upstream.server.requests == []


def test_configured_key_is_enough(upstream: Upstream, limits: Any) -> None:
    setattr(limits, upstream.key_setting, "some-key")
    setattr(limits, upstream.base_url_setting, "")

    assert upstream.provider().configuration_error() is None
