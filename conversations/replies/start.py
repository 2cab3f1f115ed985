"""Starting a turn: the steps shared by the socket and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from django.conf import settings

from attachments.messages import images_for_prompt
from conversations import logctx, metrics, services
from conversations.context import TurnContext
from conversations.db import db_call, turn_call
from conversations.errors import Busy, ChatError, NotFound, ProviderFailed, RateLimited
from conversations.llm import Provider, ProviderError, get_provider
from conversations.llm.base import PUBLIC_CONFIGURATION_ERROR
from conversations.prompts import build_request, prompt_images
from conversations.replies import replylog, worker
from conversations.replies.admission import admission
from conversations.replies.generation import ModelStream
from conversations.replies.protocol import Regenerate, Turn
from conversations.replies.registry import Reservation, registry, user_busy
from conversations.replies.reply import Reply, SavedReply, remote_reply
from conversations.titles import announce_title, title_generate

logger = logging.getLogger(__name__)


def provider_for(provider_name: str) -> Provider:
    """The persona's provider, or the default; a misconfigured one refuses the turn."""
    provider: Provider | None = None
    try:
        provider = get_provider(provider_name)
        problem = provider.configuration_error()
    except ProviderError as exc:
        problem = exc.message
    if problem or provider is None:
        # Which setting or provider name is wrong is for the log and the operator.
        logger.error("provider %r cannot be used: %s", provider_name, problem)
        failed = ProviderFailed(PUBLIC_CONFIGURATION_ERROR)
        failed.detail = problem
        raise failed
    return provider


@dataclass(frozen=True)
class Started:
    ctx: TurnContext
    reply: Reply  # generated here, on another worker, or saved before
    resumed: bool = False  # a re-send: answered as chat.resume would, no new message


_local_rate: dict[tuple[int, int], int] = {}


async def rate_check(user_id: int) -> None:
    """Messages per user per minute: counted in Redis across workers, else in this process."""
    if settings.REDIS_URL and not replylog.is_down():
        retry_after = await replylog.guarded(replylog.rate_hit(user_id))
    else:
        now = time.time()
        minute = int(now // 60)
        key = (user_id, minute)
        # Every key is of one minute, so the first tells when a new one began: then every
        # count starts again, at once (not a scan of every user's key on each message).
        counted = next(iter(_local_rate), None)
        if counted is not None and counted[1] != minute:
            _local_rate.clear()
        _local_rate[key] = _local_rate.get(key, 0) + 1
        over = _local_rate[key] > settings.MESSAGES_PER_MINUTE
        retry_after = round(60 - now % 60, 1) if over else None
    if retry_after is not None:
        raise RateLimited(
            f"You can send {settings.MESSAGES_PER_MINUTE} messages a minute.",
            retry_after=retry_after,
        )


async def rate_refund(user_id: int) -> None:
    """Give back the message counted by `rate_check`: a refused send costs no budget."""
    if settings.REDIS_URL and not replylog.is_down():
        await replylog.guarded(replylog.rate_refund(user_id))
    else:
        key = (user_id, int(time.time() // 60))
        if _local_rate.get(key):
            _local_rate[key] -= 1


async def _not_ours_or(busy: Busy, user_id: int, conversation_id: uuid.UUID) -> ChatError:
    """A refusal that names a conversation: if it is not the user's, it does not exist for
    them (404 before 409, or `busy` would tell them that it exists)."""
    owned = await db_call(services.conversation_owned)(
        user_id=user_id, conversation_id=conversation_id
    )
    return busy if owned else NotFound("No such conversation.")


def _regenerating(command: Turn) -> uuid.UUID | None:
    return command.message_id if isinstance(command, Regenerate) else None


async def _twin(user_id: int, conversation_id: uuid.UUID, command: Turn) -> Started | None:
    """A send of the same client_id that is beginning elsewhere (another socket, worker or
    the HTTP API): wait for its reply to start, and answer as `chat.resume` would."""
    deadline = time.monotonic() + TWIN_WAIT_SECONDS
    reply = await _running_reply(user_id, conversation_id, command.client_id, until=deadline)
    if reply is None:
        return None
    ctx = await db_call(services.turn_context)(
        user_id=user_id,
        client_id=command.client_id,
        history_limit=settings.HISTORY_MAX_MESSAGES,
        regenerate=_regenerating(command),
    )
    return Started(ctx, reply, resumed=True) if ctx is not None else None


async def _running_reply(
    user_id: int, conversation_id: uuid.UUID, client_id: uuid.UUID, *, until: float
) -> Reply | None:
    """The reply to that send in flight, here or on another worker, waiting until `until`
    for it to appear (its twin committed the message moments ago and is starting it)."""
    while True:
        running = registry.get(conversation_id)
        if running is not None:
            if running.user_id == user_id and running.ctx.client_id == client_id:
                return running
        else:
            remote = await replylog.guarded(replylog.active(conversation_id))
            if remote and remote.user_id == user_id and remote.client_id == str(client_id):
                return remote_reply(remote)
        if time.monotonic() >= until:
            return None
        await asyncio.sleep(TWIN_POLL_SECONDS)


# How long a send waits for a twin (the same client_id, sent at the same moment elsewhere)
# to start its reply before it takes the reply on itself (the twin's worker may have died).
TWIN_WAIT_SECONDS = 3.0
TWIN_POLL_SECONDS = 0.05


async def turn_start(*, user_id: int, command: Turn, session_key: str | None = None) -> Started:
    """Steps 1-4 of a turn: limits, begin in one short transaction, then start the
    generation.

    `session_key` is the socket's session, checked again by the turn's read.
    """
    # Heartbeats, remote stops and recovery must run wherever a turn starts (socket, HTTP,
    # the chat command), or another worker would take this reply for a dead worker's.
    worker.ensure_started()
    # The socket's task outlives a turn: do not let the last turn's ids label this one.
    logctx.turn_id.set("-")
    logctx.conversation_id.set(str(command.conversation_id) if command.conversation_id else "-")
    remote = None
    if command.conversation_id is not None:
        running = registry.get(command.conversation_id)
        if running is not None:
            if running.user_id != user_id:
                raise NotFound("No such conversation.")
            if running.ctx.client_id == command.client_id:
                return Started(running.ctx, running, resumed=True)  # a re-send in flight
            raise Busy("A reply is already being generated in this conversation.")
        if registry.beginning(command.conversation_id, command.client_id):
            twin = await _twin(user_id, command.conversation_id, command)
            if twin is not None:
                return twin
        remote = await replylog.guarded(replylog.active(command.conversation_id))
        if remote is not None:
            if remote.user_id != user_id:
                raise NotFound("No such conversation.")
            if remote.client_id != str(command.client_id):
                raise Busy("A reply is already being generated in this conversation.")
            if isinstance(command, Regenerate):
                # A re-sent regenerate streaming on another worker: unlike a send, it has
                # no row yet that would tell the turn's transaction it is a duplicate.
                twin = await _twin(user_id, command.conversation_id, command)
                if twin is not None:
                    return twin
    elif first := registry.twin_of(user_id, command.client_id):
        # A new conversation's first message, its first send still beginning here.
        started = await _after_first_send(first)
        if started is not None:
            return started
    counted = remote is None
    if counted:
        try:
            await rate_check(user_id)
        except RateLimited:
            # A re-send of a message already saved (the page re-sends what it has not seen
            # answered after a reconnect) is answered, over the limit or not.
            await rate_refund(user_id)
            sent = await db_call(services.message_sent)(
                user_id=user_id, client_id=command.client_id, regenerate=_regenerating(command)
            )
            if not sent:
                raise
            counted = False
    try:
        started = await _begin(user_id, command, session_key, remote)
    except BaseException:
        if counted:
            await rate_refund(user_id)
        raise
    if counted and started.resumed:
        await rate_refund(user_id)
    return started


async def _begin(
    user_id: int,
    command: Turn,
    session_key: str | None,
    remote: replylog.GenerationMeta | None,
) -> Started:
    received_at = time.monotonic()
    try:
        reservation = registry.reserve(
            user_id=user_id, conversation_id=command.conversation_id, client_id=command.client_id
        )
    except Busy as busy:
        return await _resent_or_refuse(busy, user_id, command, remote)
    claim = f"claim:{command.client_id}:{uuid.uuid4()}"
    claimed = False
    ctx: TurnContext | None = None
    ahead = _Ahead()
    model: ModelStream | None = None
    try:
        if not await replylog.guarded(
            replylog.slot_take(user_id, reservation.slot, settings.MAX_GENERATIONS_PER_USER), True
        ):
            await _release(reservation, None, None)
            return await _resent_or_refuse(user_busy(), user_id, command, remote)
        if command.conversation_id is not None and remote is None:
            # One reply per conversation across workers, held before anything is saved.
            got = await replylog.guarded(replylog.claim(command.conversation_id, claim), True)
            if not got:
                holder = await replylog.guarded(replylog.holder(command.conversation_id))
                if holder is not None and str(command.client_id) in holder:
                    twin = await _twin(user_id, command.conversation_id, command)
                    if twin is not None:
                        await _release(reservation, None, None)
                        return twin
                raise await _not_ours_or(
                    Busy("A reply is already being generated in this conversation."),
                    user_id,
                    command.conversation_id,
                )
            claimed = True
            reservation.claim = claim
        async with admission.turn():
            logger.debug("turn begin: database work begins")
            ctx = await _turn_begin(user_id, command, session_key, ahead.hear)
        model = ahead.take(ctx)
        metrics.DB_SECONDS.labels("begin").observe(time.monotonic() - received_at)
        logctx.turn_id.set(str(ctx.message_id))
        logctx.conversation_id.set(str(ctx.conversation_id))
        logger.debug("turn begin: database work ends")
        if ctx.duplicate:
            found = await _answer_duplicate(ctx, remote)
            if found is not None:
                await _release(reservation, ctx.conversation_id, claim if claimed else None)
                return found
            # Saved, but its reply never was (a worker died): generate it now. The reply id
            # is derived from the message id, so it can only ever be saved once.
        if not claimed:
            # A new conversation: nobody else knows it yet, but the user's other tabs will,
            # and their sends there must find it held until this reply ends.
            await replylog.guarded(replylog.claim(ctx.conversation_id, claim), True)
            claimed = True
            reservation.claim = claim
        if model is not None:
            provider, request = model.provider, model.request
        else:
            provider = provider_for(ctx.persona.provider)
            request = build_request(ctx, await images_for_prompt(prompt_images(ctx)))
    except BaseException:
        ahead.cancel()
        if model is not None:
            model.cancel()
        held = ctx.conversation_id if ctx is not None else command.conversation_id
        await _release(reservation, held, claim if claimed else None)
        raise
    try:
        generation = registry.start(ctx, provider, request, reservation, model)
    except BaseException:
        if model is not None:
            model.cancel()
        raise
    generation.received_at = received_at
    if ctx.titled:
        # The heuristic title first, so a generated one can only ever replace it.
        await announce_title(ctx.user_id, ctx.conversation_id, ctx.title)
        registry.spawn(title_generate(ctx, provider))
    return Started(ctx, generation)


async def _after_first_send(first: Reservation) -> Started | None:
    """A re-send of a new conversation's first message while its first send still begins
    here (the page re-sends what it has not seen accepted, on a new socket): the reply of
    the first, once it starts, rather than a second place and a second begin. None when
    the first ended without a reply: this send then begins on its own."""
    assert first.outcome is not None
    try:
        async with asyncio.timeout(FIRST_SEND_WAIT_SECONDS):
            # Shielded: this socket going away must not settle the first send's outcome.
            generation = await asyncio.shield(first.outcome)
    except TimeoutError:
        return None
    if generation is None:
        return None
    return Started(generation.ctx, generation, resumed=True)


# A first send waits at most TURN_BEGIN_WAIT_SECONDS for its place and then runs two short
# statements: its re-send need not wait longer than this for it.
FIRST_SEND_WAIT_SECONDS = 60.0


class _Ahead:
    """The model's stream that a turn starts before its message is written, where its
    prompt is known by then (`turn_sql.Ahead`: a new conversation's first message): the
    model's first token is then on its way while the write's round trip is. The stream is
    the turn's only if the begin returns the very context it was started for; else (the
    write found a twin's message, or failed) it is stopped, and nobody saw a word of it."""

    def __init__(self) -> None:
        self.ctx: TurnContext | None = None
        self.model: ModelStream | None = None
        self.closed = False

    def hear(self, ctx: TurnContext | None) -> None:
        """The begin's word (`turn_call`'s `ahead`): the context it will return if its write
        succeeds, or None once it knows it will not (it went on on a thread)."""
        if ctx is None:
            self.cancel()
        elif not self.closed:  # the begin is shielded: a turn given up meanwhile starts nothing
            self.ctx = ctx
            # The pull's task copies this context: its log lines carry the turn's ids.
            logctx.turn_id.set(str(ctx.message_id))
            logctx.conversation_id.set(str(ctx.conversation_id))
            self.model = ModelStream(provider_for(ctx.persona.provider), build_request(ctx))

    def take(self, ctx: TurnContext) -> ModelStream | None:
        """The stream, if it was started for `ctx`; any other is stopped."""
        model, self.model, self.closed = self.model, None, True
        if model is not None and ctx is not self.ctx:
            model.cancel()
            return None
        return model

    def cancel(self) -> None:
        self.closed = True
        if self.model is not None:
            self.model.cancel()
            self.model = None


async def _turn_begin(
    user_id: int,
    command: Turn,
    session_key: str | None,
    ahead: Callable[[TurnContext | None], None],
) -> TurnContext:
    """Step 2: the turn's one short transaction (`services.turn_begin` says when a single
    statement is all it takes), for a new message or a new version of a reply. `ahead` may
    start the reply's model before the message is written (`_Ahead`)."""
    if isinstance(command, Regenerate):
        return await db_call(services.turn_regenerate)(
            user_id=user_id,
            conversation_id=command.conversation_id,
            message_id=command.message_id,
            client_id=command.client_id,
            history_limit=settings.HISTORY_MAX_MESSAGES,
            check_persona=lambda persona: provider_for(persona.provider),
            session_key=session_key,
        )
    # A new conversation's begin is one read and one write, each atomic on its own
    # (`services._begin_transaction`); an existing one's holds its lock in a transaction.
    return await turn_call(
        services.turn_begin_steps,
        services.turn_begin,
        atomic=command.conversation_id is not None,
        ahead=ahead,
        user_id=user_id,
        conversation_id=command.conversation_id,
        persona_slug=command.persona,
        content=command.content,
        client_id=command.client_id,
        history_limit=settings.HISTORY_MAX_MESSAGES,
        parent_id=command.parent_id,
        parent_given=command.parent_given,
        attachment_ids=command.attachments,
        check_persona=lambda persona: provider_for(persona.provider),
        session_key=session_key,
    )


async def _resent_or_refuse(
    busy: Busy, user_id: int, command: Turn, remote: replylog.GenerationMeta | None
) -> Started:
    """No room for a new reply; but a re-send of a message already saved needs none: it is
    answered as chat.resume would be (the page re-sends what it has not seen answered)."""
    ctx = await db_call(services.turn_context)(
        user_id=user_id,
        client_id=command.client_id,
        history_limit=settings.HISTORY_MAX_MESSAGES,
        regenerate=_regenerating(command),
    )
    if ctx is not None and command.conversation_id in (None, ctx.conversation_id):
        found = await _answer_duplicate(ctx, remote)
        if found is not None:
            return found
    if command.conversation_id is not None:
        raise await _not_ours_or(busy, user_id, command.conversation_id)
    raise busy


async def _answer_duplicate(
    ctx: TurnContext, remote: replylog.GenerationMeta | None
) -> Started | None:
    """A re-send of a saved message: its reply, saved or running here or elsewhere."""
    if ctx.existing_reply is not None:
        return Started(ctx, SavedReply(ctx.conversation_id, ctx.existing_reply), resumed=True)
    if remote is not None and remote.message_id == str(ctx.message_id):
        return Started(ctx, remote_reply(remote), resumed=True)
    # A message saved moments ago: its twin is starting the reply. An older one's worker
    # died before it could, and the caller generates it.
    until = time.monotonic() + (TWIN_WAIT_SECONDS if ctx.age <= TWIN_WAIT_SECONDS else 0)
    reply = await _running_reply(ctx.user_id, ctx.conversation_id, ctx.client_id, until=until)
    if reply is not None:
        return Started(ctx, reply, resumed=True)
    saved = await db_call(services.reply_find)(message_id=ctx.message_id)
    if saved is not None:
        return Started(
            replace(ctx, existing_reply=saved), SavedReply(ctx.conversation_id, saved), resumed=True
        )
    return None


async def _release(
    reservation: Reservation, conversation_id: uuid.UUID | None, claim: str | None
) -> None:
    reservation.release()
    await replylog.guarded(replylog.slot_release(reservation.user_id, reservation.slot))
    if claim is not None and conversation_id is not None:
        await replylog.guarded(replylog.unclaim(conversation_id, claim))
