"""A socket's outbound frames: queued without waiting, written by the socket's own writer.

A reply never awaits a socket. Whoever has a frame for a socket (a generation, a follow of
another worker's reply log, the consumer itself) puts it here and moves on; one writer task
per socket hands the frames to the ASGI server in order, at the pace the client reads. A
frame that finds nothing queued (so the writer has nothing in flight) and room in the server
is handed to the server at once, in the same pass of the event loop (`Outbox.put`): a
stream's frames to a client that keeps up cost no wake-up of its writer. A client that
falls too far behind (more than `SOCKET_BUFFER_BYTES` queued, or its oldest
frame older than `SOCKET_MAX_LAG_SECONDS`) is dropped: the queue is discarded and the socket
is closed with `SLOW_CLOSE_CODE`, from where the page reconnects and resumes by `after_seq`.

The writer must also know when the server is holding frames the client has not taken:
Uvicorn's send() waits while its transport is paused, but Daphne's send() never waits and
buffers without bound. `ServerSocket` is the one place that knows both servers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

from django.conf import settings

from conversations import metrics
from conversations.replies.protocol import encode

logger = logging.getLogger(__name__)

Frame = dict[str, Any]

# 4008 mirrors 1008 "Policy Violation": the client did not read its frames in time.
SLOW_CLOSE_CODE = 4008
# The writer hands the server a frame only while it holds less than this for the client:
# asyncio's low-water mark, below which Uvicorn's send() never waits (it waits from the
# 64 KiB high-water mark until the buffer is back under 16 KiB).
SERVER_LOW_WATER = 16 * 1024
BACKLOG_POLL_SECONDS = 0.02
CLOSE_GRACE_SECONDS = 5.0
CUT_GRACE_SECONDS = 0.5
BURST_SECONDS = 1.0
BURST_FACTOR = 8
# Where the ASGI stack keeps the server's own send() for a socket (see `remember_server`).
SERVER_SOCKET_KEY = "chat.server_socket"


class ServerSocket:
    """What the ASGI server lets us see of one socket: the bytes it still holds for the
    client, and a way to cut the connection when a close cannot get through."""

    def __init__(self, send: Callable[..., Any] | None) -> None:
        self._send = send
        self.transport: Any = None
        self.twisted = False
        self._autobahn: Any = None
        owner = getattr(send, "__self__", None)  # Uvicorn: the protocol's bound send()
        if owner is not None and hasattr(owner, "transport"):
            self.transport = owner.transport
        elif isinstance(send, functools.partial) and send.args:  # Daphne: partial(reply, protocol)
            self.transport = getattr(send.args[0], "transport", None)
            self.twisted = self.transport is not None
            self._autobahn = send.args[0]

    def text_writer(self) -> Callable[[str], Coroutine[Any, Any, None]] | None:
        """Write a text frame with the server's own send(), or None where it is unknown.

        The consumer's send() goes through Channels' chain on every frame: the consumer,
        then the session middleware's wrapper, which reads the lazy session twice to decide
        whether to save it, and only does so on an HTTP response. A socket's frames need none
        of that; its accept and close still go through Channels. Where the server's send()
        is a coroutine function (Uvicorn's, Daphne's), a frame's write is its coroutine
        itself, with no coroutine of ours around it."""
        send = self._send
        if send is None:
            return None
        if inspect.iscoroutinefunction(send):
            server_send = cast(Callable[[Frame], Coroutine[Any, Any, None]], send)
            return lambda text: server_send({"type": "websocket.send", "text": text})

        async def write(text: str) -> None:
            await send({"type": "websocket.send", "text": text})

        return write

    def limit_send_buffer(self, size: int) -> None:
        """Cap the kernel's send buffer for this socket. Left alone, Linux grows it to 4 MiB
        for a client that reads nothing; capped, a stalled client shows in `backlog()` and
        in the outbox within a few hundred KiB, and costs no more kernel memory than that."""
        if self.transport is None or size <= 0:
            return
        with contextlib.suppress(Exception):
            if self.twisted:
                sock = self.transport.getHandle()
            else:
                sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def backlog(self) -> int:
        transport = self.transport
        if transport is None:
            return 0
        try:  # asked before every frame: no context manager made each time
            if self.twisted:
                # twisted.internet.abstract.FileDescriptor's write buffers.
                pending = len(transport.dataBuffer) - transport.offset
                return int(pending + transport._tempDataLen)
            return int(transport.get_write_buffer_size())
        except Exception:
            return 0

    def wait_for_close_reply(self, seconds: float) -> None:
        """How long the server waits for the client to answer our close frame before it
        cuts the connection. Autobahn (under Daphne) cuts after 1 s and discards the bytes
        still buffered, the close frame among them; the outbox's grace period decides instead.
        Uvicorn waits longer than any grace period here, so it is left alone."""
        if self._autobahn is not None and hasattr(self._autobahn, "closeHandshakeTimeout"):
            self._autobahn.closeHandshakeTimeout = seconds

    def abort(self) -> None:
        transport = self.transport
        if transport is None:
            return
        with contextlib.suppress(Exception):
            if self.twisted:
                transport.abortConnection()
            else:
                transport.abort()


class Outbox:
    def __init__(
        self,
        write: Callable[[str], Coroutine[Any, Any, None]],
        close: Callable[[int], Awaitable[None]],
        server: ServerSocket,
        *,
        max_bytes: int | None = None,
        max_lag: float | None = None,
    ) -> None:
        self._write = write
        self._close = close
        self._server = server
        self.max_bytes = settings.SOCKET_BUFFER_BYTES if max_bytes is None else max_bytes
        self.max_lag = settings.SOCKET_MAX_LAG_SECONDS if max_lag is None else max_lag
        self._queue: collections.deque[tuple[str, int, float]] = collections.deque()
        self.queued_bytes = 0
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # The head frame's send, begun by `put` and waiting on the server: the writer ends it.
        self._sending: asyncio.Future[None] | None = None
        self.closed = False
        self._closing_code: int | None = None

    @property
    def server_backlog(self) -> int:
        return self._server.backlog()

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run())

    def put(self, frame: Frame) -> bool:
        """Queue a frame. False once the socket is closed or was dropped for being slow."""
        if self.closed:
            return False
        text = encode(frame)
        if not self._queue and self._server.backlog() <= SERVER_LOW_WATER:
            # Nothing queued, so the writer has nothing in flight (it pops a frame only once
            # written), and the server has room: write it now, not on a wake-up. A lone
            # frame passes no bound (what counts is what waits behind the one written).
            return self._write_now(text)
        self._enqueue(text)
        # What waits behind the frame being written counts, so one large frame (a long
        # message copied to another tab) never drops a client that keeps up. A replay
        # (chat.resume of a long reply) arrives all at once: a client that takes its frames
        # has the head frame moving, so bytes count once the head has waited BURST_SECONDS,
        # up to BURST_FACTOR times the bound.
        if self._over(time.monotonic() - self._queue[0][2]):
            self._drop()
            return False
        self._ready.set()
        return True

    def _enqueue(self, text: str) -> None:
        # Counted as the memory the string takes (4 bytes a character once it holds an
        # emoji), not its length: the bound is on what a slow client costs the server.
        size = sys.getsizeof(text)
        self._queue.append((text, size, time.monotonic()))
        self.queued_bytes += size

    def _write_now(self, text: str) -> bool:
        """Hand a frame to the server from here, as the writer would; False if the socket
        went away.

        The server's send() is a coroutine that, with room in the server, finishes without
        waiting (Uvicorn's waits only while its transport is paused, Daphne's never): run to
        its end here, it costs the frame no task wake-up and no place in the queue. One that
        must wait after all goes on as a task of its own (`_GoingOn`); the frame goes to the
        head of the queue, and the writer lets that send end before it writes anything
        after it.

        Its first steps run in the caller's task, so a send() must not tie anything to its
        task (a timeout or cancel scope around its wait, a context variable it sets): the
        servers' own sends (Uvicorn's, Daphne's) and Channels' do not."""
        sending = self._write(text)
        try:
            waiting = sending.send(None)
        except StopIteration:
            return True
        except Exception:
            logger.debug("socket writer ended", exc_info=True)
            self.close()  # the socket went away; its disconnect detaches the outbox
            return False
        if self.closed:  # closed while it was written: nothing more goes out
            sending.close()
            return False
        self._enqueue(text)
        self._sending = asyncio.ensure_future(_GoingOn(sending, waiting))
        self._ready.set()
        return True

    def _over(self, stuck: float) -> bool:
        """Past a bound, with the head frame waiting `stuck` seconds for the client."""
        waiting = self.queued_bytes - self._queue[0][1] if self._queue else 0
        return (
            stuck > self.max_lag
            or (waiting > self.max_bytes and stuck > BURST_SECONDS)
            or waiting > self.max_bytes * BURST_FACTOR
        )

    def _drop(self) -> None:
        logger.warning(
            "dropping a slow socket: %d frames, %d bytes queued, oldest %.1fs",
            len(self._queue),
            self.queued_bytes,
            time.monotonic() - self._queue[0][2],
        )
        metrics.SLOW_SOCKETS_DROPPED.inc()
        self.close()
        _background(self._hang_up(SLOW_CLOSE_CODE))

    def cut(self, code: int) -> None:
        """A hostile client: close with `code` if the close goes out at once, else cut the
        connection; nothing queued is sent."""
        self.close()
        _background(self._hang_up(code, cut=True))

    async def _hang_up(self, code: int, *, cut: bool = False) -> None:
        """Close with `code`. The close frame waits behind what the server already holds; a
        client that reads nothing would never take it, so the connection is cut after a
        grace period, or at once (`cut`) for a client that is not owed one."""
        grace = CUT_GRACE_SECONDS if cut else CLOSE_GRACE_SECONDS
        self._server.wait_for_close_reply(grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._close(code), grace)
        deadline = time.monotonic() + grace
        while self._server.backlog() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(BACKLOG_POLL_SECONDS * 5)
        if cut or self._server.backlog() > 0:
            self._server.abort()

    def finish(self, code: int) -> None:
        """Write what is queued, then close the socket with `code`; take nothing more."""
        if self.closed:
            return
        self.closed = True
        self._closing_code = code
        self._ready.set()

    def close(self) -> None:
        """Stop writing; frames not yet written are discarded (the socket is going away)."""
        self.closed = True
        self._queue.clear()
        self.queued_bytes = 0
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self._sending is not None:
            if self._sending.done() and not self._sending.cancelled():
                self._sending.exception()  # its error was the socket going away: seen
            self._sending.cancel()
            self._sending = None
        # The task keeps its CancelledError, whose traceback holds `_run`'s frame and so this
        # outbox: let go of the task, or the two are freed only by the cycle collector.
        self._writer = None

    def detach(self) -> None:
        """The socket is gone: close, and let go of its writers, which refer back to the
        consumer. A closed socket is then freed as soon as nothing holds it, not at the
        cycle collector's next full collection, which comes rarely (chatproject/asgi.py)."""
        self.close()
        self._write = self._close = _gone

    async def _room(self, queued_at: float) -> bool:
        """Wait until the server holds little for this client, watching the bounds; False
        when they were passed (the socket is dropped, or cut if it was closing)."""
        while self._server.backlog() > SERVER_LOW_WATER:
            await asyncio.sleep(BACKLOG_POLL_SECONDS)
            if self._over(time.monotonic() - queued_at):
                if self._closing_code is not None:
                    # Closing (a session that ended) to a client that reads nothing.
                    await self._hang_up(self._closing_code, cut=True)
                elif not self.closed:
                    self._drop()
                return False
        return True

    async def _run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                while self._queue:
                    text, size, queued_at = self._queue[0]
                    sending, self._sending = self._sending, None
                    if sending is not None:
                        await sending  # the head frame, begun by `put`
                    elif not await self._room(queued_at):
                        return
                    else:
                        # With room, the server takes the frame without waiting.
                        await self._write(text)
                    # Popped only once written: a frame in flight still counts as queued.
                    if self._queue:
                        self._queue.popleft()
                        self.queued_bytes -= size
                if self._closing_code is not None:
                    await self._hang_up(self._closing_code)
                    return
                self._ready.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket went away; its disconnect closes the outbox.
            logger.debug("socket writer ended", exc_info=True)
            self.close()


class _GoingOn:
    """The rest of a send that `Outbox.put` began and that had to wait, to run as a task:
    the task is handed what the send waits for, exactly as if it had run the send from the
    start, and the send is resumed with its result, error or cancellation, until it ends.
    (Python 3.12's eager tasks do this themselves; this project runs 3.11.) A task cancelled
    before its first step never resumes the send: the send is closed when it is freed."""

    def __init__(self, sending: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._sending = sending
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting = self._waiting
        while True:
            # Resumed inside the except clause, which lets go of the exception when it ends:
            # kept in a local, its traceback and this frame would hold each other (and the
            # server's protocol) until the cycle collector's next run, which comes rarely.
            try:
                yield waiting
            except BaseException as exc:  # cancellation too: the send decides what it does
                try:
                    waiting = self._sending.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = self._sending.send(None)
                except StopIteration:
                    return


async def _gone(_: object) -> None:
    """A detached outbox's writers: the socket they wrote to is gone."""


_hanging_up: set[asyncio.Task[None]] = set()


def _background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _hanging_up.add(task)  # held: the loop keeps only weak references to its tasks
    task.add_done_callback(_hanging_up.discard)


def remember_server(app: Any) -> Any:
    """ASGI middleware, outermost: note the server's own socket before others wrap send()."""

    async def middleware(scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            server = ServerSocket(send)
            server.limit_send_buffer(settings.SOCKET_SEND_BUFFER_BYTES)
            scope = {**scope, SERVER_SOCKET_KEY: server}
        return await app(scope, receive, send)

    return middleware
