"""The local reply: a process-owned task that streams a reply from the provider.

A generation belongs to the process, not to a socket: sockets follow it and may go away.
Nothing in this module touches the database while a reply streams; the reply is saved by
one `save_reply` call after the stream ends, and `chat.done` goes out after that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from conversations import logctx, metrics, services
from conversations.context import ReplyInfo, TurnContext
from conversations.db import turn_call
from conversations.errors import NotFound, SaveFailed
from conversations.llm.base import Provider, ProviderError, ProviderRequest, Usage
from conversations.replies import replylog
from conversations.replies.protocol import (
    FINAL_ONLY,
    Deliver,
    DeltaFrames,
    Frame,
    saved_done_frame,
)
from conversations.replies.ticker import Pacer, ticker

if TYPE_CHECKING:
    from conversations.replies.registry import Registry

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


@dataclass
class Follower:
    deliver: Deliver
    next_seq: int
    live: bool = False


class ModelStream:
    """The provider's stream for one reply, pulled into a buffer by a task of its own from
    the moment it is made: by the turn itself where its prompt is known before its message
    is written (`turn_sql.Ahead`), else by `Generation.start`. Nothing is sent to a socket
    from here; the generation makes frames of the buffer once it has announced the reply."""

    def __init__(self, provider: Provider, request: ProviderRequest) -> None:
        self.provider = provider
        self.request = request
        self.events = provider.stream(request)
        self.buffer: list[str] = []  # the provider's text since the last frame
        self.first = asyncio.Event()  # set at its first text
        self.usage = Usage()
        self.task = asyncio.get_running_loop().create_task(self._pull())

    async def _pull(self) -> None:
        async for event in self.events:
            if isinstance(event, Usage):
                self.usage = event
            elif isinstance(event, str) and event:
                self.buffer.append(event)
                self.first.set()

    def cancel(self) -> None:
        """Stop pulling: its model stream closes as the cancel passes through it."""
        if not self.task.done():
            self.task.cancel()
        elif not self.task.cancelled():
            self.task.exception()  # read: a failure nobody streamed is not logged as lost


class Generation:
    def __init__(
        self,
        ctx: TurnContext,
        provider: Provider,
        request: ProviderRequest,
        registry: Registry,
        model: ModelStream | None = None,
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.request = request
        self.registry = registry
        self.frames: list[str] = []  # coalesced delta texts; frames[i] has seq i + 1
        self.tokens = 0  # text deltas from the provider, counted in metrics once at the end
        self._deltas = DeltaFrames(ctx.conversation_id, ctx.message_id)
        self.logged = 0  # frames the Redis reply log holds so far
        # Frames that may go to followers: with the log on, only those it holds, so no socket
        # sees a delta that a resume elsewhere, or a recovery after kill -9, would not have.
        self.shown = 0
        self._logging: asyncio.Future[bool] | None = None  # the batch with those after it
        self._logging_to = 0  # the frames it brings the log up to
        self.final_frame: Frame | None = None  # chat.done (or chat.error) once it is saved
        self.followers: dict[str, Follower] = {}
        self.stop_requested = False
        self.interrupted = False
        self.task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._model = model  # the provider's stream, if the turn started it already
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.received_at = self.started  # when chat.send arrived; set by turn_start
        self.slot: str | None = None  # the user's reply slot across workers
        self.claim: str | None = None  # the conversation's claim across workers

    @property
    def message_id(self) -> uuid.UUID:
        return self.ctx.message_id

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
            claim=self.claim or "",
        )

    # --- following -----------------------------------------------------------------------

    def follow(self, key: str, deliver: Deliver, after_seq: int = 0) -> None:
        """Replay frames after `after_seq`, then deliver live ones, then the final frame.

        Nothing here waits for a socket: `deliver` queues the frame in the follower's outbox.
        Following again restarts from the new `after_seq`, unless it is FINAL_ONLY: a stop
        from a socket already following keeps its stream.
        """
        if key in self.followers and after_seq == FINAL_ONLY:
            return
        follower = Follower(deliver=deliver, next_seq=after_seq + 1)
        self.followers.pop(key, None)
        if not self._send_missing(follower):
            return
        if self.final_frame is not None:
            deliver(self.final_frame)
        else:
            follower.live = True
            self.followers[key] = follower

    def unfollow(self, key: str) -> None:
        self.followers.pop(key, None)

    def _delta(self, seq: int) -> Frame:
        return self._deltas.frame(seq, self.frames[seq - 1])

    def _send_missing(self, follower: Follower) -> bool:
        """The frames after the follower's cursor, in seq order; False if it went away."""
        while follower.next_seq <= self.shown:
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

    def _log_soon(self) -> None:
        """Hand the Redis log what it lacks, for this loop pass's batch (conversations/
        replies/replylog.py). One batch in flight per reply keeps its log in seq order; one
        that failed (Redis away) is handed in again with the next frame."""
        if not settings.REDIS_URL or self._logging is not None:
            return
        end = len(self.frames)
        if self.logged == end:
            return
        self._logging, self._logging_to = (
            replylog.appender.append(
                self.ctx.message_id, self.logged + 1, self.frames[self.logged : end]
            ),
            end,
        )
        self._logging.add_done_callback(self._logged)

    def _logged(self, written: asyncio.Future[bool]) -> None:
        """The batch's answer. Whoever sees it first acts on it: its own callback, or
        `_log_all`, which may find the batch done before the callback has run."""
        if written is not self._logging:
            return
        self._logging = None
        if not written.cancelled() and written.result():
            self.logged = self._logging_to
            self._show(self.logged)
            self._log_soon()  # the frames made while the batch was on its way
        else:
            self._show(len(self.frames))  # Redis is away: the socket's own stream goes on

    def _show(self, upto: int) -> None:
        if upto > self.shown:
            if self.shown == 0:
                # When the sockets get the first delta: with the log on, once Redis has it.
                metrics.TIME_TO_FIRST_TOKEN.observe(time.monotonic() - self.received_at)
            self.shown = upto
            self._catch_up()

    async def _log_all(self) -> None:
        """Wait until the log holds every frame, or Redis fails."""
        while True:
            self._log_soon()
            written = self._logging
            if written is None:
                return
            # Done already, this returns at once: the loop then moves on by acting on the
            # answer itself, never by waiting for its callback without yielding.
            await asyncio.shield(written)
            self._logged(written)
            if written.cancelled() or not written.result():
                return

    def _emit(self, text: str) -> None:
        self.frames.append(text)
        if settings.REDIS_URL and not replylog.is_down():
            self._log_soon()  # shown once the log has it
        else:
            self._show(len(self.frames))

    # --- running -------------------------------------------------------------------------

    async def stop(self) -> None:
        self.request_stop()

    def request_stop(self) -> None:
        self.stop_requested = True
        self._cancel_stream()

    async def final(self) -> Frame:
        """The final frame, once the reply is saved (or failed to be)."""
        assert self.task is not None
        # Shielded: a waiter that goes away (an HTTP client hanging up) cancels nothing.
        await asyncio.shield(self.task)
        assert self.final_frame is not None
        return self.final_frame

    def interrupt(self) -> None:
        self.interrupted = True
        self._cancel_stream()

    @property
    def _producer(self) -> asyncio.Task[None] | None:
        """The task that pulls the provider's stream, once there is one."""
        return self._model.task if self._model is not None else None

    def _cancel_stream(self) -> None:
        # Cancel the provider's side, not a send in progress: the frames already made still
        # reach every follower, then the stream ends as stopped or interrupted.
        target = self._producer if self._producer is not None else self._stream_task
        if target is not None:
            target.cancel()

    @property
    def usage(self) -> Usage:
        return self._model.usage if self._model is not None else Usage()

    def start(self) -> asyncio.Task[None]:
        """Start pulling the provider's stream, unless the turn did (`ModelStream`), and the
        task that makes frames of it and saves the reply (`run`); that task is returned.

        The pull is a task of its own, not one `run` starts: the model's request goes out
        (and the demo model's clock starts) one pass of the event loop after the turn's
        begin, not three (the run task, its stream task, then the pull each waited for a
        pass). Its text waits in the buffer until `run` has announced the reply."""
        if self._model is None:
            self._model = ModelStream(self.provider, self.request)
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self.run())
        # However the run task ends, nothing goes on pulling from the model: cancelled before
        # its first step (a shutdown in the same pass), it never reaches `_stream`'s cleanup.
        self.task.add_done_callback(self._pull_ends)
        return self.task

    def _pull_ends(self, _: asyncio.Task[None]) -> None:
        if self._model is not None:
            self._model.cancel()

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

        One producer task drains the provider into a buffer, flushed at each of the process's
        flush ticks (conversations/replies/ticker.py), however many tokens arrive between
        them (a task or a wait per token is what made per-token streaming expensive). A
        model that pauses still has its text out within one window; under load the window
        widens to the loop's lag and, while the worker is short of CPU, up to
        STREAM_COALESCE_MAX_MS.
        """
        window = settings.STREAM_COALESCE_MS / 1000
        widest = settings.STREAM_COALESCE_MAX_MS / 1000
        model = self._model
        assert model is not None, "started by Generation.start"
        buffer, first, producer = model.buffer, model.first, model.task

        def flush() -> None:
            text = "".join(buffer)
            self.tokens += len(buffer)
            buffer.clear()
            self._emit(text)

        try:
            waiter = asyncio.ensure_future(first.wait())
            try:
                await asyncio.wait({producer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            pacer = Pacer(ticker, producer)
            while True:
                if buffer:
                    flush()
                if producer.done():
                    break
                await pacer.next(window, widest)
            producer.result()  # the provider's error, if it failed
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
            if buffer:
                # Text the model already produced is kept, even when stopped or failing;
                # _finish delivers it before chat.done.
                self.tokens += len(buffer)
                self.frames.append("".join(buffer))
            # Closes the upstream HTTP stream on stop and shutdown.
            with contextlib.suppress(BaseException):
                await model.events.aclose()

    async def _finish(self, status: str, error: str) -> str:
        """Save, then send the final frame. Returns the status as saved."""
        # Counted once a turn, not once a frame: the metrics lock stays off the hot path.
        metrics.TOKENS.inc(self.tokens)
        metrics.FRAMES.inc(len(self.frames))
        await self._log_all()
        known = {"conversation_id": str(self.conversation_id), "client_id": str(self.ctx.client_id)}
        unsaved = False
        try:
            saved = await save_reply(
                message_id=self.ctx.message_id,
                conversation_id=self.conversation_id,
                user_message_id=self.ctx.user_message_id,
                content=self.text,
                status=status,
                usage=self.usage,
                error=error,
                retry_for=settings.REPLY_SAVE_RETRY_SECONDS,
                owner_id=self.user_id,
                persona_slug=self.ctx.persona.slug,
                prompt_chars=len(self.request.system)
                + sum(len(m.content) for m in self.request.messages),
            )
        except SaveFailed as failed:
            final, unsaved = failed.frame(**known), True
        else:
            if saved is None:
                gone = NotFound("The conversation was deleted while the reply was generated.")
                final = gone.frame(**known)
            else:
                final = saved_done_frame(self.conversation_id, saved)
                status = saved.status
        self.final_frame = final
        self._show(len(self.frames))  # whatever the log holds: the row is saved now
        for follower in list(self.followers.values()):
            if follower.live:
                follower.deliver(final)
        self.followers.clear()
        self.registry.forget(self)
        await self._log_all()
        if self.logged == len(self.frames) or not settings.REDIS_URL:
            await replylog.guarded(
                replylog.finish(self.meta, final, unsaved_status=status if unsaved else None)
            )
        # Else Redis is away: no final may follow an incomplete log. The reply's markers
        # stay, and a recovery round later ends the log with the row as saved.
        return status


async def save_reply(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    content: str,
    status: str,
    usage: Usage,
    error: str,
    retry_for: float,
    owner_id: int | None = None,
    persona_slug: str | None = None,
    prompt_chars: int = 0,
) -> ReplyInfo | None:
    """Save a reply (once: an earlier row stands and is returned), retrying with backoff for
    `retry_for` seconds while the database is away. None when the conversation is gone
    (its tokens still count where `owner_id` and `persona_slug` say whose they are);
    `prompt_chars` counts towards a reply the provider reported no usage for;
    SaveFailed when the database never came back. The live path and recovery both use it."""
    deadline = time.monotonic() + retry_for
    delay = 0.25
    while True:
        began = time.monotonic()
        try:
            logger.debug("turn save: database work begins")
            saved = await turn_call(
                services.reply_save_steps,
                services.reply_save,
                atomic=False,
                message_id=message_id,
                conversation_id=conversation_id,
                user_message_id=user_message_id,
                content=content,
                status=status,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                error=error,
                owner_id=owner_id,
                persona_slug=persona_slug,
                prompt_chars=prompt_chars,
            )
            metrics.DB_SECONDS.labels("save").observe(time.monotonic() - began)
            logger.debug("turn save: database work ends (%.1f ms)", _ms(began))
            return saved
        except DatabaseError as exc:
            if time.monotonic() + delay > deadline:
                metrics.SAVE_FAILED.inc()
                logger.error(
                    "reply %s of conversation %s not saved: %s", message_id, conversation_id, exc
                )
                raise SaveFailed("The reply could not be saved. It is kept for recovery.") from exc
            metrics.SAVE_RETRIES.inc()
            logger.warning("reply save failed (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
