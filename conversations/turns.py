"""Starting a turn: the steps shared by the socket and the HTTP API."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings

from conversations import logctx, metrics, services
from conversations.context import TurnContext
from conversations.db import db_call
from conversations.errors import ProviderFailed
from conversations.frames import Send
from conversations.llm import Provider, ProviderError, get_provider
from conversations.prompts import build_request
from conversations.streaming import Generation, registry
from conversations.titles import title_generate

logger = logging.getLogger(__name__)


def provider_for(provider_name: str) -> Provider:
    """The persona's provider, or the default; a misconfigured one refuses the turn."""
    try:
        provider = get_provider(provider_name)
    except ProviderError as exc:
        raise ProviderFailed(exc.message) from None
    if problem := provider.configuration_error():
        raise ProviderFailed(problem)
    return provider


@dataclass(frozen=True)
class Started:
    ctx: TurnContext
    generation: Generation | None  # None: the reply was saved before (an idempotent re-send)


async def turn_start(*, user_id: int, command: Send) -> Started:
    """Steps 1-4 of a turn: reserve, begin in one transaction, then start the generation."""
    if command.conversation_id is not None:
        running = registry.get(command.conversation_id)
        if (
            running is not None
            and running.user_id == user_id
            and running.ctx.client_id == command.client_id
        ):
            return Started(running.ctx, running)  # a re-send of the turn in flight
    received_at = time.monotonic()
    reservation = registry.reserve(user_id=user_id, conversation_id=command.conversation_id)
    try:
        logger.debug("turn begin: database work begins")
        ctx = await db_call(services.turn_begin)(
            user_id=user_id,
            conversation_id=command.conversation_id,
            persona_slug=command.persona,
            content=command.content,
            client_id=command.client_id,
            history_limit=settings.HISTORY_MAX_MESSAGES,
            check_persona=lambda persona: provider_for(persona.provider),
        )
        metrics.DB_SECONDS.labels("begin").observe(time.monotonic() - received_at)
        logctx.turn_id.set(str(ctx.message_id))
        logctx.conversation_id.set(str(ctx.conversation_id))
        logger.debug("turn begin: database work ends")
        if ctx.duplicate:
            running = registry.get(ctx.conversation_id)
            if running is not None and running.ctx.user_message_id == ctx.user_message_id:
                reservation.release()
                return Started(running.ctx, running)
            if ctx.existing_reply is not None:
                reservation.release()
                return Started(ctx, None)
            # Saved, but its reply never was (a worker died): generate it now. The reply id
            # is derived from the message id, so it can only ever be saved once.
        provider = provider_for(ctx.persona.provider)
    except BaseException:
        reservation.release()
        raise
    generation = registry.start(ctx, provider, build_request(ctx), reservation)
    generation.received_at = received_at
    if ctx.conversation_created:
        registry.spawn(title_generate(ctx, provider))
    return Started(ctx, generation)
