"""Google Gemini through the google-genai SDK (`client.aio.models.generate_content_stream`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx2
from django.conf import settings
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from conversations.llm.base import Provider, ProviderError, ProviderRequest, Usage
from conversations.llm.resilience import (
    Event,
    Limits,
    redact,
    resilient_stream,
    shared_ssl_context,
    status_error,
    transport_error,
    unwind,
)

logger = logging.getLogger(__name__)

LABEL = "Gemini"

# Finish reasons that mean a filter withheld the answer, as opposed to a model that is done.
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
        "JAILBREAK",
    }
)
_NORMAL_END = frozenset({"STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"})


class GeminiProvider(Provider):
    name = "gemini"

    def configuration_error(self) -> str | None:
        if not settings.GEMINI_API_KEY:
            return (
                "Gemini needs an API key: set GEMINI_API_KEY (from https://aistudio.google.com/)."
            )
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[str | Usage, None]:
        self.check_configured()
        limits = Limits.from_settings()
        # `async for` alone would leave the inner generator open when this one is closed.
        events = resilient_stream(LABEL, lambda: _attempt(request, limits), limits)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event


def _client(limits: Limits) -> genai.Client:
    timeout = limits.http_timeout()

    async def precise_timeouts(http_request: httpx2.Request) -> None:
        # HttpOptions.timeout is one number for connect and read alike; restore the split.
        http_request.extensions["timeout"] = timeout.as_dict()

    ssl_context = shared_ssl_context()
    return genai.Client(
        api_key=settings.GEMINI_API_KEY,
        # Explicit, so GOOGLE_GENAI_USE_VERTEXAI in the environment cannot switch services.
        vertexai=False,
        http_options=types.HttpOptions(
            base_url=settings.GEMINI_BASE_URL or None,
            timeout=int((timeout.read or 0) * 1000) or None,
            # Passing the shared TLS context skips building three new ones per client, and an
            # explicit transport keeps the SDK on httpx2 even if aiohttp gets installed.
            client_args={"verify": ssl_context},
            async_client_args={
                "transport": httpx2.AsyncHTTPTransport(verify=ssl_context),
                "ssl": ssl_context,
                "event_hooks": {"request": [precise_timeouts]},
            },
        ),
    )


def _contents(request: ProviderRequest) -> list[types.Content]:
    return [
        types.Content(
            role="model" if message.role == "assistant" else "user",
            # Images as inline data parts after the text, as Gemini's docs place them; a
            # message of images alone has no text part (Gemini refuses an empty one).
            parts=[
                *(
                    [types.Part(text=message.content)]
                    if message.content or not message.images
                    else []
                ),
                *(
                    types.Part.from_bytes(data=image.data, mime_type=image.mime_type)
                    for image in message.images
                ),
            ],
        )
        for message in request.messages
    ]


def _config(request: ProviderRequest) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        system_instruction=request.system or None,
        temperature=request.temperature,
        # No tools are declared. Automatic continuation would resume a broken stream from a
        # checkpoint and could repeat text already streamed; resilient_stream decides instead.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
    )


async def _attempt(request: ProviderRequest, limits: Limits) -> AsyncGenerator[Event, None]:
    # A client per attempt: closing the client is what reliably closes the connection when a
    # reply is stopped early; closing the SDK's stream only closes its outermost generator.
    client: genai.Client | None = None
    stream: AsyncIterator[types.GenerateContentResponse] | None = None
    try:
        client = _client(limits)
        stream = await client.aio.models.generate_content_stream(
            model=request.model or settings.GEMINI_MODEL,
            contents=_contents(request),
            config=_config(request),
        )
        usage: Usage | None = None
        async for chunk in stream:
            _raise_if_prompt_blocked(chunk)
            if chunk.usage_metadata is not None:
                usage = Usage(
                    input_tokens=chunk.usage_metadata.prompt_token_count,
                    output_tokens=chunk.usage_metadata.candidates_token_count,
                )
            candidate = chunk.candidates[0] if chunk.candidates else None
            if candidate is None:
                continue
            if text := _text(candidate):
                yield text
            _raise_if_cut_short(candidate)
        if usage is not None:
            yield usage
    except ProviderError:
        raise
    except genai_errors.APIError as exc:
        raise _api_error(exc) from exc
    except httpx2.HTTPError as exc:
        raise transport_error(LABEL, exc) from exc
    except genai_errors.UnknownApiResponseError as exc:
        raise ProviderError(f"{LABEL} sent a reply that could not be read.") from exc
    except Exception as exc:
        logger.exception("Unexpected failure while streaming from Gemini")
        raise ProviderError(f"{LABEL} failed unexpectedly ({type(exc).__name__}).") from exc
    finally:
        if client is not None:
            await _close(client, stream)


async def _close(client: genai.Client, stream: AsyncIterator[object] | None) -> None:
    await client.aio.aclose()
    if stream is not None:
        await unwind(stream)
    client.close()


def _text(candidate: types.Candidate) -> str:
    if candidate.content is None or not candidate.content.parts:
        return ""
    # Thought summaries are the model's notes to itself, not part of the reply.
    return "".join(part.text for part in candidate.content.parts if part.text and not part.thought)


def _reason(value: Any) -> str:
    return str(getattr(value, "value", value))


def _raise_if_prompt_blocked(chunk: types.GenerateContentResponse) -> None:
    feedback = chunk.prompt_feedback
    if feedback is None or feedback.block_reason is None:
        return
    reason = _reason(feedback.block_reason)
    raise ProviderError(f"The model declined to answer this message (safety filter: {reason}).")


def _raise_if_cut_short(candidate: types.Candidate) -> None:
    if candidate.finish_reason is None:
        return
    reason = _reason(candidate.finish_reason)
    if reason in _NORMAL_END:
        return
    if reason in _FILTERED:
        raise ProviderError(f"The model declined to answer (safety filter: {reason}).")
    raise ProviderError(f"The model stopped before finishing its answer ({reason}).")


def _api_error(exc: genai_errors.APIError) -> ProviderError:
    message = redact(str(exc.message or ""), settings.GEMINI_API_KEY)
    return status_error(
        LABEL, int(exc.code or 0), message, key_setting="GEMINI_API_KEY", bad_key=_is_bad_key(exc)
    )


def _is_bad_key(exc: genai_errors.APIError) -> bool:
    # The Gemini API answers an invalid key with 400 INVALID_ARGUMENT, not 401.
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    items = error.get("details") if isinstance(error, dict) else None
    reasons = {item.get("reason") for item in items or [] if isinstance(item, dict)}
    return "API_KEY_INVALID" in reasons or "API key not valid" in str(exc.message or "")
