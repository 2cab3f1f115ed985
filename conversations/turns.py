"""Starting a turn: the steps shared by the socket and the HTTP API."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

from conversations import logctx, metrics, replylog, services, supervisor
from conversations.context import TurnContext
from conversations.db import db_call
from conversations.errors import Busy, ProviderFailed, RateLimited
from conversations.frames import Send
from conversations.llm import Provider, ProviderError, get_provider
from conversations.prompts import build_request
from conversations.streaming import Generation, Reservation, registry
from conversations.titles import announce_title, title_generate

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
    generation: Generation | None  # None: saved before, or generated on another worker
    remote: replylog.GenerationMeta | None = None  # the generation lives on another worker


_local_rate: dict[tuple[int, int], int] = {}


async def rate_check(user_id: int) -> None:
    """Messages per user per minute: counted in Redis across workers, else in this process."""
    if settings.REDIS_URL and not replylog.is_down():
        retry_after = await replylog.guarded(replylog.rate_hit(user_id))
    else:
        now = time.time()
        minute = int(now // 60)
        key = (user_id, minute)
        _local_rate[key] = _local_rate.get(key, 0) + 1
        for old in [k for k in _local_rate if k[1] < minute]:
            del _local_rate[old]
        over = _local_rate[key] > settings.MESSAGES_PER_MINUTE
        retry_after = round(60 - now % 60, 1) if over else None
    if retry_after is not None:
        raise RateLimited(
            f"You can send {settings.MESSAGES_PER_MINUTE} messages a minute.",
            retry_after=retry_after,
        )


async def turn_start(*, user_id: int, command: Send) -> Started:
    """Steps 1-4 of a turn: limits, begin in one transaction, then start the generation."""
    # Heartbeats, remote stops and recovery must run wherever a turn starts (socket, HTTP,
    # the chat command), or another worker would take this reply for a dead worker's.
    supervisor.ensure_started()
    # The socket's task outlives a turn: do not let the last turn's ids label this one.
    logctx.turn_id.set("-")
    logctx.conversation_id.set(str(command.conversation_id) if command.conversation_id else "-")
    remote = None
    if command.conversation_id is not None:
        running = registry.get(command.conversation_id)
        if running is not None and running.user_id == user_id:
            if running.ctx.client_id == command.client_id:
                return Started(running.ctx, running)  # a re-send of the turn in flight
            raise Busy("A reply is already being generated in this conversation.")
        remote = await replylog.guarded(replylog.active(command.conversation_id))
        if remote is not None and remote.user_id == user_id:
            if remote.client_id != str(command.client_id):
                raise Busy("A reply is already being generated in this conversation.")
        else:
            remote = None
    if remote is None:
        await rate_check(user_id)
    received_at = time.monotonic()
    cluster_active = await replylog.guarded(replylog.user_active(user_id), 0)
    reservation = registry.reserve(
        user_id=user_id, conversation_id=command.conversation_id, cluster_active=cluster_active
    )
    claim = f"claim:{uuid.uuid4()}"
    claimed = False
    try:
        if command.conversation_id is not None and remote is None:
            # One reply per conversation across workers, held before anything is saved.
            got = await replylog.guarded(replylog.claim(command.conversation_id, claim), True)
            if not got:
                raise Busy("A reply is already being generated in this conversation.")
            claimed = True
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
                await _release(reservation, ctx.conversation_id, claim if claimed else None)
                return Started(running.ctx, running)
            if ctx.existing_reply is not None:
                await _release(reservation, ctx.conversation_id, claim if claimed else None)
                return Started(ctx, None)
            if remote is not None and remote.user_message_id == str(ctx.user_message_id):
                reservation.release()
                return Started(ctx, None, remote=remote)
            # Saved, but its reply never was (a worker died): generate it now. The reply id
            # is derived from the message id, so it can only ever be saved once.
        provider = provider_for(ctx.persona.provider)
    except BaseException:
        await _release(reservation, command.conversation_id, claim if claimed else None)
        raise
    generation = registry.start(ctx, provider, build_request(ctx), reservation)
    generation.received_at = received_at
    if ctx.conversation_created:
        # The heuristic title first, so a generated one can only ever replace it.
        await announce_title(ctx.user_id, ctx.conversation_id, ctx.title)
        registry.spawn(title_generate(ctx, provider))
    return Started(ctx, generation)


async def _release(
    reservation: Reservation, conversation_id: uuid.UUID | None, claim: str | None
) -> None:
    reservation.release()
    if claim is not None and conversation_id is not None:
        await replylog.guarded(replylog.unclaim(conversation_id, claim))
