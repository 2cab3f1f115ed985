"""A socket's outbox hands a frame to the server in the same pass of the event loop when its
writer is idle, and keeps the frames in order, each written once, when the server's send()
must wait (Uvicorn's waits while its transport is paused; the legacy `websockets` server's
waits after writing, for the client to drain).

The server here is the edge of the project: an ASGI send() whose waiting the test controls.
The real servers, with clients that read slowly or not at all, are in
tests/workers/test_slow_clients.py."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from conversations.replies.outbox import Outbox, ServerSocket

pytestmark = pytest.mark.asyncio


class Server:
    """An ASGI server's send() for one socket: it takes a frame at once while `open` is set,
    and waits for it otherwise, before or after writing (`waits_after`)."""

    def __init__(self, *, waits_after: bool = False) -> None:
        self.written: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.waits_after = waits_after
        self.fails: Exception | None = None

    async def send(self, text: str) -> None:
        if self.fails is not None:
            raise self.fails
        if not self.waits_after:
            await self.open.wait()
        self.written.append(text)
        if self.waits_after:
            await self.open.wait()

    async def close(self, code: int) -> None:
        self.written.append(f"close {code}")


def frame(n: int) -> dict[str, object]:
    return {"type": "chat.delta", "seq": n, "text": f"word{n} "}


async def started_outbox(server: Server) -> Outbox:
    outbox = Outbox(server.send, server.close, ServerSocket(None), max_bytes=1 << 20, max_lag=30.0)
    outbox.start()
    await asyncio.sleep(0)  # the writer runs up to its wait for a frame
    return outbox


def seqs(server: Server) -> list[int]:
    return [int(text.split('"seq": ')[1].split(",")[0]) for text in server.written]


async def written(server: Server, count: int) -> None:
    async with asyncio.timeout(5):
        while len(server.written) < count:
            await asyncio.sleep(0.01)


async def test_a_frame_to_an_idle_socket_is_written_in_the_same_pass():
    server = Server()
    outbox = await started_outbox(server)
    for n in (1, 2, 3):
        assert outbox.put(frame(n))
        # Written before put() returns: no wake-up of the writer, no pass of the loop.
        assert seqs(server) == list(range(1, n + 1))
    assert outbox.queued_bytes == 0
    outbox.detach()


@pytest.mark.parametrize("waits_after", [False, True], ids=["before-writing", "after-writing"])
async def test_frames_stay_in_order_and_are_written_once_while_a_send_waits(waits_after):
    server = Server(waits_after=waits_after)
    outbox = await started_outbox(server)
    assert outbox.put(frame(1))
    server.open.clear()  # the client stops reading: the server's send() waits
    for n in range(2, 6):
        assert outbox.put(frame(n))
    await asyncio.sleep(0.05)
    # Frame 2's send began and waits (having written it, or not yet); 3-5 wait behind it.
    assert seqs(server) == ([1, 2] if waits_after else [1])
    assert outbox.queued_bytes > 0
    server.open.set()
    await written(server, 5)
    await asyncio.sleep(0.05)
    assert seqs(server) == [1, 2, 3, 4, 5]
    assert outbox.queued_bytes == 0
    # Idle again: the next frame goes out at once.
    assert outbox.put(frame(6))
    assert seqs(server)[-1] == 6
    outbox.detach()


async def test_a_send_that_fails_closes_the_outbox():
    server = Server()
    outbox = await started_outbox(server)
    server.fails = ConnectionResetError("the client went away")
    assert not outbox.put(frame(1))
    assert outbox.closed
    assert not outbox.put(frame(2))
    assert server.written == []


async def test_closing_while_a_send_waits_writes_nothing_more():
    server = Server()
    outbox = await started_outbox(server)
    server.open.clear()
    assert outbox.put(frame(1))
    assert outbox.put(frame(2))
    await asyncio.sleep(0.05)
    outbox.close()  # the socket went away
    server.open.set()
    await asyncio.sleep(0.05)
    assert server.written == []
    assert not outbox.put(frame(3))


async def test_a_send_cancelled_while_it_waits_is_freed_without_the_cycle_collector():
    """The worker runs the cycle collector rarely (chatproject/asgi.py): a socket closed while
    the server's send() waits must not leave that send, and the server's protocol it holds,
    in a cycle until the next full collection."""
    server = Server()
    outbox = await started_outbox(server)
    server.open.clear()
    assert outbox.put(frame(1))  # the send begins in put() and waits
    await asyncio.sleep(0.05)  # and goes on waiting, as a task of its own
    gone = weakref.ref(server)
    del server
    gc.disable()
    try:
        outbox.detach()  # the socket went away: the waiting send is cancelled
        for _ in range(10):  # the cancellation takes a loop pass or two
            await asyncio.sleep(0)
        assert gone() is None
    finally:
        gc.enable()


async def test_a_server_send_that_is_not_a_coroutine_function_gets_every_frame():
    """ASGI asks only that send() return an awaitable: a server whose send() hands back a
    future (not a coroutine) still gets each frame, in order, as an ASGI message."""
    messages: list[dict[str, object]] = []

    def send(message: dict[str, object]) -> asyncio.Future[None]:
        messages.append(message)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    write = ServerSocket(send).text_writer()
    assert write is not None
    server = Server()
    outbox = Outbox(write, server.close, ServerSocket(None), max_bytes=1 << 20, max_lag=30.0)
    outbox.start()
    for n in (1, 2, 3):
        assert outbox.put(frame(n))
    async with asyncio.timeout(5):
        while len(messages) < 3:
            await asyncio.sleep(0.01)
    assert [m["type"] for m in messages] == ["websocket.send"] * 3
    assert [f'"seq": {n},' in str(m["text"]) for n, m in enumerate(messages, 1)] == [True] * 3
    outbox.detach()
