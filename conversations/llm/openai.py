"""OpenAI and any OpenAI-compatible server (Ollama, vLLM, LM Studio) through the openai SDK."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncGenerator
from urllib.parse import urlsplit

import httpx2
import openai
from django.conf import settings
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
)

from conversations.llm.base import ImagePart, Provider, ProviderError, ProviderRequest, Usage
from conversations.llm.resilience import (
    Event,
    Limits,
    cap,
    redact,
    resilient_stream,
    shared_ssl_context,
    status_error,
    transport_error,
    unwind,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers such as Ollama accept any key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "not-needed"


class OpenAIProvider(Provider):
    name = "openai"

    def configuration_error(self) -> str | None:
        if not settings.OPENAI_API_KEY and not settings.OPENAI_BASE_URL:
            return (
                "OpenAI needs an API key: set OPENAI_API_KEY, or set OPENAI_BASE_URL to an "
                "OpenAI-compatible server such as Ollama."
            )
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[str | Usage, None]:
        self.check_configured()
        limits = Limits.from_settings()
        label = _label()
        # `async for` alone would leave the inner generator open when this one is closed.
        events = resilient_stream(label, lambda: _attempt(request, limits, label), limits)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event


def _label() -> str:
    if not settings.OPENAI_BASE_URL:
        return "OpenAI"
    # hostname and port only: a base URL may carry credentials.
    url = urlsplit(settings.OPENAI_BASE_URL)
    host = f"{url.hostname}:{url.port}" if url.port else str(url.hostname)
    return f"the OpenAI-compatible server at {host}"


def _client(limits: Limits) -> openai.AsyncOpenAI:
    timeout = limits.http_timeout()
    return openai.AsyncOpenAI(
        # Explicit values, so stray OPENAI_* environment variables cannot override settings.
        api_key=settings.OPENAI_API_KEY or PLACEHOLDER_KEY,
        base_url=settings.OPENAI_BASE_URL or DEFAULT_BASE_URL,
        timeout=timeout,
        # resilient_stream retries, and only before the first token.
        max_retries=0,
        http_client=openai.DefaultAsyncHttpx2Client(verify=shared_ssl_context(), timeout=timeout),
    )


def _messages(request: ProviderRequest) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if message.role == "assistant":
            messages.append({"role": "assistant", "content": message.content})
        elif message.images:
            # The Chat Completions vision form: text and images as parts, images as data
            # URLs, which every OpenAI-compatible server that reads images accepts.
            parts: list[ChatCompletionContentPartParam] = []
            if message.content:
                parts.append({"type": "text", "text": message.content})
            parts.extend(
                {"type": "image_url", "image_url": {"url": _data_url(image)}}
                for image in message.images
            )
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": message.content})
    return messages


def _data_url(image: ImagePart) -> str:
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


async def _attempt(
    request: ProviderRequest, limits: Limits, label: str
) -> AsyncGenerator[Event, None]:
    # A client per attempt (it costs well under a millisecond): an httpx client belongs to the
    # event loop that first used it, and the non-streaming API may run each call on its own loop.
    client: openai.AsyncOpenAI | None = None
    stream: openai.AsyncStream[ChatCompletionChunk] | None = None
    try:
        client = _client(limits)
        stream = await client.chat.completions.create(
            model=request.model or settings.OPENAI_MODEL,
            messages=_messages(request),
            temperature=request.temperature,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage: Usage | None = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = Usage(
                    input_tokens=chunk.usage.prompt_tokens,
                    output_tokens=chunk.usage.completion_tokens,
                )
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                if choice.delta.content:
                    yield choice.delta.content
                if choice.finish_reason == "content_filter":
                    raise ProviderError("The model declined to answer (content filter).")
        if usage is not None:
            yield usage
    except ProviderError:
        raise
    except openai.APIError as exc:
        raise _api_error(exc, label) from exc
    except httpx2.HTTPError as exc:
        raise transport_error(label, exc) from exc
    except Exception as exc:
        logger.exception("Unexpected failure while streaming from %s", label)
        raise ProviderError(f"{cap(label)} failed unexpectedly ({type(exc).__name__}).") from exc
    finally:
        if stream is not None:
            await stream.close()
            await unwind(stream)
        if client is not None:
            await client.close()


def _api_error(exc: openai.APIError, label: str) -> ProviderError:
    message = redact(_server_message(exc), settings.OPENAI_API_KEY)
    if isinstance(exc, openai.APIStatusError):
        return status_error(label, exc.status_code, message, key_setting="OPENAI_API_KEY")
    if isinstance(exc, openai.APIConnectionError):
        # The SDK wraps the httpx error; its cause tells a refused connection from a timeout.
        cause = exc.__cause__
        if isinstance(cause, httpx2.HTTPError):
            return transport_error(label, cause)
        return ProviderError(f"Could not connect to {label}.", retryable=True)
    # An error event inside a stream that had started: the request itself was accepted.
    return ProviderError(f"{cap(label)} reported an error mid-reply: {message}", retryable=True)


def _server_message(exc: openai.APIError) -> str:
    # OpenAI nests {"message": ...}; Ollama and others send a bare string as the error.
    if isinstance(exc.body, str):
        return exc.body
    if isinstance(exc.body, dict) and isinstance(exc.body.get("message"), str):
        return str(exc.body["message"])
    return exc.message
