"""Generations: the process-owned tasks that stream replies, and the registry that finds them.

A generation belongs to the process, not to a socket: sockets follow it and may go away.
Nothing in this module touches the database while a reply streams; the reply is saved by
one `reply_save` call after the stream ends, and `chat.done` goes out after that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from conversations import logctx, metrics, services
from conversations.context import ReplyInfo, TurnContext
from conversations.db import db_call
from conversations.errors import Busy
from conversations.llm.base import Provider, ProviderError, ProviderRequest, Usage
from conversations.replies import replylog

logger = logging.getLogger(__name__)

Frame = dict[str, Any]
# Hands a frame to a follower without waiting (a socket's outbox); False: it stopped following.
Deliver = Callable[[Frame], bool]


def delta_frame(conversation_id: uuid.UUID, message_id: uuid.UUID, seq: int, text: str) -> Frame:
    return {
        "type": "chat.delta",
        "conversation_id": str(conversation_id),
        "message_id": str(message_id),
        "seq": seq,
        "text": text,
    }


def done_frame(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    *,
    status: str,
    content: str,
    usage: Usage,
    error: str | None,
) -> Frame:
    return {
        "type": "chat.done",
        "conversation_id": str(conversation_id),
        "message_id": str(message_id),
        "status": status,
        "content": content,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        "error": error or None,
    }


def saved_done_frame(conversation_id: uuid.UUID, reply: ReplyInfo) -> Frame:
    return done_frame(
        conversation_id,
        reply.message_id,
        status=reply.status,
        content=reply.content,
        usage=Usage(reply.input_tokens, reply.output_tokens),
        error=reply.error,
    )


def accepted_frame(ctx: TurnContext) -> Frame:
    return {
        "type": "chat.accepted",
        "conversation_id": str(ctx.conversation_id),
        "client_id": str(ctx.client_id),
        "user_message_id": str(ctx.user_message_id),
        "message_id": str(ctx.message_id),
        "persona": ctx.persona.slug,
        "title": ctx.title,
    }


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
SAVE_FAILED = object()  # the database never came back within REPLY_SAVE_RETRY_SECONDS


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


@dataclass
class Follower:
    deliver: Deliver
    next_seq: int
    live: bool = False


class Generation:
    def __init__(
        self, ctx: TurnContext, provider: Provider, request: ProviderRequest, registry: Registry
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.request = request
        self.registry = registry
        self.frames: list[str] = []  # coalesced delta texts; frames[i] has seq i + 1
        self.logged = 0  # frames appended to the Redis reply log so far
        self.final: list[Frame] = []  # chat.done (or chat.error) once the reply is saved
        self.followers: dict[str, Follower] = {}
        self.stop_requested = False
        self.interrupted = False
        self.usage = Usage()
        self.task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._producer: asyncio.Future[None] | None = None
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.received_at = self.started  # when chat.send arrived; set by turn_start
        self.slot: str | None = None  # the user's reply slot across workers

    @property
    def conversation_id(self) -> uuid.UUID:
        return self.ctx.conversation_id

    @property
    def user_id(self) -> int:
        return self.ctx.user_id

    @property
    def text(self) -> str:
        return "".join(self.frames)

    @property
    def meta(self) -> replylog.GenerationMeta:
        return replylog.GenerationMeta(
            conversation_id=str(self.conversation_id),
            message_id=str(self.ctx.message_id),
            user_message_id=str(self.ctx.user_message_id),
            client_id=str(self.ctx.client_id),
            user_id=self.user_id,
            worker=WORKER_ID,
            started=self.started_wall,
        )

    # --- following -----------------------------------------------------------------------

    def follow(self, key: str, deliver: Deliver, after_seq: int = 0) -> None:
        """Replay frames after `after_seq`, then deliver live ones, then the final frame.

        Nothing here waits for a socket: `deliver` queues the frame in the follower's outbox.
        """
        if key in self.followers:
            return
        follower = Follower(deliver=deliver, next_seq=after_seq + 1)
        if not self._send_missing(follower):
            return
        if self.final:
            for frame in self.final:
                deliver(frame)
        else:
            follower.live = True
            self.followers[key] = follower

    def unfollow(self, key: str) -> None:
        self.followers.pop(key, None)

    def _delta(self, seq: int) -> Frame:
        return delta_frame(self.conversation_id, self.ctx.message_id, seq, self.frames[seq - 1])

    def _send_missing(self, follower: Follower) -> bool:
        """The frames after the follower's cursor, in seq order; False if it went away."""
        while follower.next_seq <= len(self.frames):
            seq = follower.next_seq
            follower.next_seq += 1
            if not follower.deliver(self._delta(seq)):
                return False
        return True

    def _catch_up(self) -> None:
        """Give every live follower the frames it has not had yet, in seq order."""
        for key, follower in list(self.followers.items()):
            if follower.live and not self._send_missing(follower):
                # A socket that went away, or was dropped for reading too slowly, stops
                # following; the generation goes on.
                logger.debug("dropping follower %s of %s", key, self.conversation_id)
                self.followers.pop(key, None)

    async def _log_pending(self) -> None:
        """Append to the Redis log what it lacks (a cut-short append is made up later)."""
        if not settings.REDIS_URL:
            return
        while self.logged < len(self.frames):
            seq = self.logged + 1
            if not await replylog.guarded(
                replylog.append(self.ctx.message_id, seq, self.frames[seq - 1]), False
            ):
                return
            self.logged = seq

    async def _emit(self, text: str) -> None:
        self.frames.append(text)
        metrics.FRAMES.inc()
        if len(self.frames) == 1:
            metrics.TIME_TO_FIRST_TOKEN.observe(time.monotonic() - self.received_at)
        self._catch_up()
        await self._log_pending()

    # --- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_requested = True
        self._cancel_stream()

    def interrupt(self) -> None:
        self.interrupted = True
        self._cancel_stream()

    def _cancel_stream(self) -> None:
        # Cancel the provider's side, not a send in progress: the frames already made still
        # reach every follower, then the stream ends as stopped or interrupted.
        target = self._producer if self._producer is not None else self._stream_task
        if target is not None:
            target.cancel()

    async def run(self) -> None:
        logctx.turn_id.set(str(self.ctx.message_id))
        logctx.conversation_id.set(str(self.conversation_id))
        metrics.GENERATIONS_IN_FLIGHT.inc()
        try:
            await replylog.guarded(replylog.announce(self.meta))
            await self._run()
        finally:
            metrics.GENERATIONS_IN_FLIGHT.dec()
            if self.slot is not None:
                await replylog.guarded(replylog.slot_release(self.user_id, self.slot))

    async def _run(self) -> None:
        status, error = "complete", ""
        self._stream_task = asyncio.create_task(self._stream())
        try:
            await self._stream_task
        except asyncio.CancelledError:
            if self.stop_requested:
                status = "stopped"
            else:
                status, error = "interrupted", "The server shut down before the reply finished."
            if not self._stream_task.done():
                # The run task itself was cancelled (shutdown): stop streaming, then save.
                self._stream_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._stream_task
        except ProviderError as exc:
            status, error = "error", exc.message
            kind = "retryable" if exc.retryable else "refused"
            metrics.PROVIDER_ERRORS.labels(self.provider.name, kind).inc()
            logger.warning("provider %s failed: %s", self.provider.name, exc.message)
        except Exception:
            logger.exception("generation %s failed", self.ctx.message_id)
            status, error = "error", "The model failed unexpectedly."
            metrics.PROVIDER_ERRORS.labels(self.provider.name, "unexpected").inc()
        status = await self._finish(status, error)
        metrics.TURNS.labels(status).inc()

    async def _stream(self) -> None:
        """Provider events into frames: the first delta at once, then one frame per window.

        One producer task drains the provider into a buffer and one timer per window flushes
        it, however many tokens arrive in that window (a task or a wait per token is what
        made per-token streaming expensive). A model that pauses still has its text out
        within one window.
        """
        window = settings.STREAM_COALESCE_MS / 1000
        buffer: list[str] = []
        events = self.provider.stream(self.request)
        first = asyncio.Event()

        async def pull() -> None:
            async for event in events:
                if isinstance(event, Usage):
                    self.usage = event
                elif isinstance(event, str) and event:
                    buffer.append(event)
                    first.set()

        async def flush() -> None:
            text, count = "".join(buffer), len(buffer)
            buffer.clear()
            metrics.TOKENS.inc(count)
            await self._emit(text)

        producer = self._producer = asyncio.ensure_future(pull())
        try:
            waiter = asyncio.ensure_future(first.wait())
            try:
                await asyncio.wait({producer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            while True:
                if buffer:
                    await flush()
                if producer.done():
                    break
                await asyncio.wait({producer}, timeout=window)
            producer.result()  # the provider's error, if it failed
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
            if buffer:
                # Text the model already produced is kept, even when stopped or failing;
                # _finish delivers it before chat.done.
                metrics.TOKENS.inc(len(buffer))
                self.frames.append("".join(buffer))
                metrics.FRAMES.inc()
            # Closes the upstream HTTP stream on stop and shutdown.
            with contextlib.suppress(BaseException):
                await events.aclose()

    async def _finish(self, status: str, error: str) -> str:
        """Save, then send the final frame. Returns the status as saved."""
        await self._log_pending()
        saved = await self._save(status=status, content=self.text, error=error)
        if saved is SAVE_FAILED:
            final: Frame = {
                "type": "chat.error",
                "code": "save_failed",
                "message": "The reply could not be saved. It is kept for recovery.",
                "conversation_id": str(self.conversation_id),
                "client_id": str(self.ctx.client_id),
            }
        elif saved is None:
            final = {
                "type": "chat.error",
                "code": "not_found",
                "message": "The conversation was deleted while the reply was generated.",
                "conversation_id": str(self.conversation_id),
                "client_id": str(self.ctx.client_id),
            }
        else:
            assert isinstance(saved, ReplyInfo)
            final = saved_done_frame(self.conversation_id, saved)
            status = saved.status
        self.final = [final]
        self._catch_up()
        for follower in list(self.followers.values()):
            if follower.live:
                follower.deliver(final)
        self.followers.clear()
        self.registry.forget(self)
        await self._log_pending()
        if self.logged == len(self.frames) or not settings.REDIS_URL:
            await replylog.guarded(
                replylog.finish(
                    self.meta, final, unsaved_status=status if saved is SAVE_FAILED else None
                )
            )
        # Else Redis is away: no final may follow an incomplete log. The reply's markers
        # stay, and a recovery round later ends the log with the row as saved.
        return status

    async def _save(self, *, status: str, content: str, error: str) -> ReplyInfo | object | None:
        """Save with backoff while the database is away: the saved row, None when the
        conversation is gone, SAVE_FAILED when the database never came back."""
        deadline = time.monotonic() + settings.REPLY_SAVE_RETRY_SECONDS
        delay = 0.25
        while True:
            began = time.monotonic()
            try:
                logger.debug("turn save: database work begins")
                saved = await db_call(services.reply_save)(
                    message_id=self.ctx.message_id,
                    conversation_id=self.conversation_id,
                    user_message_id=self.ctx.user_message_id,
                    content=content,
                    status=status,
                    input_tokens=self.usage.input_tokens,
                    output_tokens=self.usage.output_tokens,
                    error=error,
                )
                metrics.DB_SECONDS.labels("save").observe(time.monotonic() - began)
                logger.debug("turn save: database work ends (%.1f ms)", _ms(began))
                return saved
            except DatabaseError as exc:
                if time.monotonic() + delay > deadline:
                    metrics.SAVE_FAILED.inc()
                    logger.error(
                        "reply %s of conversation %s not saved: %s",
                        self.ctx.message_id,
                        self.conversation_id,
                        exc,
                    )
                    return SAVE_FAILED
                metrics.SAVE_RETRIES.inc()
                logger.warning("reply save failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def user_busy() -> Busy:
    return Busy(
        f"You already have {settings.MAX_GENERATIONS_PER_USER} replies being "
        "generated; wait for one to finish."
    )


@dataclass
class Reservation:
    """A slot held while a turn begins, so limits hold before the database is reached."""

    registry: Registry
    user_id: int
    conversation_id: uuid.UUID | None
    client_id: uuid.UUID | None = None
    # The user's reply slot across workers (Redis), held from here until the reply ends.
    slot: str = field(default_factory=lambda: f"slot:{uuid.uuid4()}")
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry.release(self)


@dataclass
class Registry:
    generations: dict[uuid.UUID, Generation] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    side_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    draining: bool = False
    sockets: set[Any] = field(default_factory=set)  # open consumers, closed on shutdown

    def get(self, conversation_id: uuid.UUID) -> Generation | None:
        return self.generations.get(conversation_id)

    def _count_for(self, user_id: int) -> int:
        running = sum(1 for g in self.generations.values() if g.user_id == user_id)
        return running + sum(1 for r in self.reservations if r.user_id == user_id)

    def reserve(
        self,
        *,
        user_id: int,
        conversation_id: uuid.UUID | None,
        client_id: uuid.UUID | None = None,
    ) -> Reservation:
        """Hold a place on this worker; the user's limit across workers is `slot_take`'s."""
        if self.draining:
            raise Busy("This server is restarting; reconnect and try again.")
        if conversation_id is not None and (
            conversation_id in self.generations
            or any(r.conversation_id == conversation_id for r in self.reservations)
        ):
            raise Busy("A reply is already being generated in this conversation.")
        if self._count_for(user_id) >= settings.MAX_GENERATIONS_PER_USER:
            raise user_busy()
        if len(self.generations) + len(self.reservations) >= settings.MAX_GENERATIONS_PER_WORKER:
            raise Busy("The server is busy; try again in a moment.")
        reservation = Reservation(self, user_id, conversation_id, client_id)
        self.reservations.append(reservation)
        return reservation

    def beginning(self, conversation_id: uuid.UUID, client_id: uuid.UUID) -> bool:
        """Whether a turn for this very client_id is beginning here (a re-send racing it)."""
        return any(
            r.conversation_id == conversation_id and r.client_id == client_id
            for r in self.reservations
        )

    def release(self, reservation: Reservation) -> None:
        with contextlib.suppress(ValueError):
            self.reservations.remove(reservation)

    def start(
        self,
        ctx: TurnContext,
        provider: Provider,
        request: ProviderRequest,
        reservation: Reservation,
    ) -> Generation:
        reservation.release()
        if ctx.conversation_id in self.generations:
            raise Busy("A reply is already being generated in this conversation.")
        generation = Generation(ctx, provider, request, self)
        generation.slot = reservation.slot
        self.generations[ctx.conversation_id] = generation
        # The task belongs to the process: a socket that goes away does not cancel it.
        task = asyncio.get_running_loop().create_task(generation.run())
        generation.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return generation

    def spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Side work of a turn (e.g. naming it) that belongs to the process, like generations."""
        task = asyncio.get_running_loop().create_task(work)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)
        return task

    def forget(self, generation: Generation) -> None:
        if self.generations.get(generation.conversation_id) is generation:
            del self.generations[generation.conversation_id]

    def unfollow_all(self, key: str) -> None:
        for generation in list(self.generations.values()):
            generation.unfollow(key)

    async def drain(self, timeout: float) -> None:
        """Let generations finish for `timeout` seconds, then save the rest as interrupted."""
        self.draining = True
        tasks = list(self.tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for generation in list(self.generations.values()):
            generation.interrupt()
        if pending:
            await asyncio.wait(pending)


registry = Registry()
