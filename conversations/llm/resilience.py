"""Timeouts, retries and cleanup shared by the providers that call a model over HTTP.

Three deadlines bound a reply: connecting (LLM_CONNECT_TIMEOUT), the first token
(LLM_FIRST_TOKEN_TIMEOUT, counted from the start of the turn across every attempt, so retries
never make a user wait longer than that), and silence between tokens (LLM_IDLE_TIMEOUT).
A transient failure is retried at most `MAX_RETRIES` times, and only before the first token:
after it, a retry would repeat text the user has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

import httpx2
from django.conf import settings

from conversations.llm.base import ProviderError, Usage

logger = logging.getLogger(__name__)

MAX_RETRIES = 2

Event = str | Usage
Attempt = Callable[[], AsyncGenerator[Event, None]]


@dataclass(frozen=True)
class Limits:
    connect: float = 10.0
    first_token: float = 60.0
    idle: float = 30.0
    backoff: float = 0.5
    retries: int = MAX_RETRIES

    @classmethod
    def from_settings(cls) -> Limits:
        # getattr: these names may be absent from settings.py; the defaults above apply.
        return cls(
            connect=float(getattr(settings, "LLM_CONNECT_TIMEOUT", cls.connect)),
            first_token=float(getattr(settings, "LLM_FIRST_TOKEN_TIMEOUT", cls.first_token)),
            idle=float(getattr(settings, "LLM_IDLE_TIMEOUT", cls.idle)),
            backoff=float(getattr(settings, "LLM_RETRY_BACKOFF", cls.backoff)),
        )

    def http_timeout(self) -> httpx2.Timeout:
        # Reads get a generous backstop only: the first-token and idle deadlines enforced in
        # `resilient_stream` fire first and say what went wrong.
        backstop = max(self.first_token, self.idle) + self.connect
        return httpx2.Timeout(backstop, connect=self.connect, pool=self.connect)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one reads the CA store and blocks for ~30 ms."""
    return httpx2.create_ssl_context()


def transport_error(label: str, exc: httpx2.HTTPError) -> ProviderError:
    """A human sentence for a network failure; all of them are worth retrying."""
    if isinstance(exc, httpx2.ConnectTimeout | httpx2.PoolTimeout):
        return ProviderError(f"Could not connect to {label} in time.", retryable=True)
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(f"{cap(label)} took too long to answer.", retryable=True)
    if isinstance(exc, httpx2.ConnectError):
        return ProviderError(f"Could not connect to {label}.", retryable=True)
    if isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError):
        return ProviderError(f"The connection to {label} broke off.", retryable=True)
    return ProviderError(f"A network error interrupted {label}.", retryable=True)


def status_error(
    label: str, status: int, detail: str = "", *, key_setting: str = "", bad_key: bool = False
) -> ProviderError:
    """A human sentence for an HTTP error status; only 408, 429 and 5xx are retryable."""
    if bad_key or status in (401, 403):
        # The setting to fix is for the log; users are only told who can fix it.
        check = f": check {key_setting}" if key_setting else ""
        logger.error("%s rejected the API key (HTTP %s)%s", cap(label), status, check)
        return ProviderError(
            f"{cap(label)} rejected the API key (HTTP {status}); ask an administrator."
        )
    if status == 429:
        return ProviderError(
            f"{cap(label)} is rate limiting requests (HTTP 429). Try again shortly.",
            retryable=True,
        )
    if status == 408 or status >= 500:
        return ProviderError(
            f"{cap(label)} is unavailable right now (HTTP {status}). Try again shortly.",
            retryable=True,
        )
    if status == 404:
        return ProviderError(
            f"{cap(label)} answered 404 Not Found: check the model name and the base URL."
        )
    suffix = f": {_short(detail)}" if detail else ""
    return ProviderError(f"{cap(label)} refused the request (HTTP {status}){suffix}.")


def cap(label: str) -> str:
    """`label` at the start of a sentence ("the server at ..." becomes "The server at ...")."""
    return label[:1].upper() + label[1:]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(text: str, secret: str) -> str:
    """Services sometimes echo the key back in error messages; never pass it on."""
    return text.replace(secret, "[redacted]") if secret else text


async def unwind(stream: AsyncIterator[object], limit: float = 1.0) -> None:
    """Pull an SDK stream whose connection is already closed until it ends.

    SDK streams are chains of nested async generators; stopping early leaves the inner ones
    suspended, and the garbage collector later closes them in no set order, which makes asyncio
    log "aclose(): asynchronous generator is already running". One more pull makes the innermost
    read fail, and that failure unwinds the whole chain in order.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(limit):
            async for _ in stream:
                pass


async def resilient_stream(
    label: str, attempt: Attempt, limits: Limits | None = None
) -> AsyncGenerator[Event, None]:
    """Run `attempt()` under the deadlines, retrying transient failures before the first token.

    `attempt` opens one upstream stream and must close it in its own `finally`; this function
    closes every attempt it starts, so cancelling the consuming task or `aclose()`-ing this
    generator closes the upstream HTTP stream too.
    """
    limits = limits or Limits.from_settings()
    loop = asyncio.get_running_loop()
    first_token_deadline = loop.time() + limits.first_token
    failures = 0
    while True:
        stream = attempt()
        started = False
        try:
            while True:
                deadline = loop.time() + limits.idle if started else first_token_deadline
                item = await _next(stream, deadline, label, limits, started)
                if item is None:
                    return
                started = started or (isinstance(item, str) and bool(item))
                yield item
        except ProviderError as error:
            failures += 1
            time_left = first_token_deadline - loop.time()
            delay = _retry_delay(error, started, failures, limits, time_left)
            if delay is None:
                raise
        finally:
            await stream.aclose()
        await asyncio.sleep(delay)


def _retry_delay(
    error: ProviderError, started: bool, failures: int, limits: Limits, time_left: float
) -> float | None:
    """Seconds to wait before the next attempt, or None when `error` must reach the caller."""
    if started or not error.retryable or failures > limits.retries:
        return None
    # Jitter keeps many replies that failed together from retrying in step.
    delay = limits.backoff * 2 ** (failures - 1) * random.uniform(1.0, 1.25)
    return delay if delay < time_left else None


async def _next(
    stream: AsyncGenerator[Event, None],
    deadline: float,
    label: str,
    limits: Limits,
    started: bool,
) -> Event | None:
    """The next event, None at the end, or ProviderError when the deadline passes first."""
    try:
        async with asyncio.timeout_at(deadline) as timeout:
            return await anext(stream)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        if not timeout.expired():
            raise
    if started:
        raise ProviderError(
            f"{cap(label)} stopped sending text for {limits.idle:g} seconds; "
            "the reply was cut short.",
            retryable=True,
        )
    raise ProviderError(
        f"{cap(label)} did not start answering within {limits.first_token:g} seconds.",
        retryable=True,
    )
