"""Per-worker background duties: heartbeats, remote stop requests, recovery, and SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import uuid
from typing import Any

from django.conf import settings

from conversations.replies import replylog
from conversations.replies.registry import registry

logger = logging.getLogger(__name__)

_tasks: dict[int, asyncio.Task[None]] = {}
RESTART_CLOSE_CODE = 4012


def ensure_started() -> None:
    """Start this event loop's supervisor once (lazily: Daphne has no startup hook)."""
    loop = asyncio.get_running_loop()
    if id(loop) in _tasks:
        return
    _tasks[id(loop)] = loop.create_task(_supervise())
    if settings.GRACEFUL_SHUTDOWN:
        _install_sigterm(loop)


async def stop() -> None:
    task = _tasks.pop(id(asyncio.get_running_loop()), None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _supervise() -> None:
    duties = [_session_checks()]
    if settings.REDIS_URL:
        duties += [_heartbeats(), _control(), _recovery()]
    await asyncio.gather(*duties)


async def _session_checks() -> None:
    """A session can end with no signal reaching its sockets: its row deleted (an
    operator's "sign out everywhere", `clearsessions`), its expiry passed, or its user
    changed by another process where no Redis carries the signal (`manage.py
    changepassword` beside a worker on the in-memory layer). Such a socket would go on
    hearing the user's other tabs and could stop their replies; it ends (4401) within
    `SOCKET_SESSION_CHECK_SECONDS`. A logout, and a change made in a worker or with Redis,
    end theirs at once (conversations/signals.py)."""
    while settings.SOCKET_SESSION_CHECK_SECONDS > 0:
        await asyncio.sleep(settings.SOCKET_SESSION_CHECK_SECONDS)
        try:
            await end_sockets_of_sessions_over()
        except Exception:
            # A bug must cost one round, not every round after it.
            logger.exception("checking the sockets' sessions failed; the next round tries again")


async def end_sockets_of_sessions_over() -> int:
    """End this worker's sockets whose session is over; how many ended."""
    from django.db import DatabaseError

    from conversations import services
    from conversations.db import db_call

    sockets = [s for s in list(registry.sockets) if s.counted and not s.ending and s.session_key]
    if not sockets:
        return 0
    try:
        over = await db_call(services.sessions_over)(
            sockets={(socket.user_id, socket.session_key) for socket in sockets}
        )
    except DatabaseError:
        logger.warning("could not check the sockets' sessions; the next round will")
        return 0
    ended = [
        s for s in sockets if (s.user_id, s.session_key) in over and s.counted and not s.ending
    ]
    for socket in ended:
        await socket.end_session()
    return len(ended)


async def _heartbeats() -> None:
    while True:
        generations = list(registry.generations.values())
        metas = [generation.meta for generation in generations]
        slots = [(g.user_id, g.slot) for g in generations if g.slot is not None]
        await replylog.guarded(replylog.beat(metas, slots))
        await asyncio.sleep(settings.HEARTBEAT_SECONDS)


async def _control() -> None:
    """Stop requests from other workers, on the `chat:control` channel."""
    while True:
        redis = replylog.client()
        if redis is None:
            return
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(replylog.CONTROL_CHANNEL)
                while True:
                    # A short poll, not listen(): a quiet channel is not a dead Redis.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message.get("type") == "message":
                        _on_control(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            replylog.mark_down(exc)
        await asyncio.sleep(settings.REDIS_RETRY_SECONDS)


def _on_control(raw: Any) -> None:
    try:
        command = json.loads(raw)
        conversation_id = uuid.UUID(command["conversation_id"])
    except (ValueError, KeyError, TypeError):
        return
    generation = registry.get(conversation_id)
    if command.get("op") == "stop" and generation is not None:
        generation.request_stop()


async def _recovery() -> None:
    from conversations.replies.recovery import recover_orphans

    while True:
        await asyncio.sleep(settings.RECOVERY_INTERVAL_SECONDS)
        if replylog.is_down():
            continue
        try:
            await recover_orphans()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("recovery round failed: %s", exc)


def _install_sigterm(loop: asyncio.AbstractEventLoop) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def on_term() -> None:
        if not registry.draining:
            loop.create_task(_shutdown(loop, previous))

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError, ValueError):
        logger.info("graceful shutdown unavailable here (no signal handlers on this loop)")


async def _shutdown(loop: asyncio.AbstractEventLoop, previous: Any) -> None:
    """Refuse new turns, let replies finish for a while, save the rest, then exit."""
    logger.warning(
        "SIGTERM: draining %d generation(s) for up to %.0fs",
        len(registry.generations),
        settings.GENERATION_DRAIN_SECONDS,
    )
    await registry.drain(settings.GENERATION_DRAIN_SECONDS)
    for consumer in list(registry.sockets):
        with contextlib.suppress(Exception):
            # 4012 mirrors 1012 "Service Restart" (servers may not send 1012 themselves):
            # the page reconnects, through the load balancer, to a worker that is up.
            await consumer.close(code=RESTART_CLOSE_CODE)
    # Let the close frames reach the clients before the server stops.
    await asyncio.sleep(0.5)
    _exit_by(loop, settings.SHUTDOWN_HARD_SECONDS)
    loop.remove_signal_handler(signal.SIGTERM)
    if callable(previous):
        previous(signal.SIGTERM, None)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _exit_by(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """The replies are saved by now; the server's own shutdown waits for every connection
    to close, and a client that never reads never lets one close. End the process anyway."""

    def force() -> None:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        except RuntimeError:  # the loop changed its task set meanwhile (another thread)
            pending = []
        logger.warning(
            "shutdown: %d task(s) still open %.0fs after the drain; exiting now",
            len(pending),
            seconds,
        )
        for task in pending[:20]:
            logger.info("still open: %s", _where(task))
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def _where(task: asyncio.Task[Any]) -> str:
    """The task and the line each coroutine in its await chain is at."""
    chain = [repr(task)]
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None)
    return " > ".join(chain)
