"""A client that never reads must not freeze anyone else: its reply, the user's other tabs,
`chat.stop`, other users, or the server's shutdown. Real servers (Uvicorn, as `make run`
and the README start it, and Daphne), real sockets with a tiny receive buffer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import time
import urllib.request
import uuid
from typing import Any

import pytest
from django.conf import settings

from conversations.db import db_call
from tests.conftest import make_user, session_cookie
from tests.workers.conftest import Worker, deltas_text, open_with_cookie

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLOW_ENV = {
    # Long, fast replies: a never-reading socket's buffers fill within a second or two.
    "DEMO_REPLY_WORDS": "4000",
    "DEMO_TOKEN_DELAY_MS": "3",
    "SOCKET_BUFFER_BYTES": "65536",
    "SOCKET_MAX_LAG_SECONDS": "2",
    "MAX_GENERATIONS_PER_WORKER": "6",
    "MAX_GENERATIONS_PER_USER": "10",
    "GENERATION_DRAIN_SECONDS": "3",
    "SHUTDOWN_HARD_SECONDS": "3",
}


class NeverReads:
    """A WebSocket client with a 2 KiB receive buffer that sends, then never reads again."""

    def __init__(self, worker: Worker, cookie: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.sock.connect(("127.0.0.1", worker.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /ws/chat/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{worker.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{worker.port}\r\n"
            f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # byte by byte: not one byte past the headers
        assert response.startswith(b"HTTP/1.1 101"), response

    def send(self, frame: dict[str, Any]) -> None:
        payload = json.dumps(frame, ensure_ascii=False).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def send_frame(content: str) -> dict[str, Any]:
    return {
        "type": "chat.send",
        "conversation_id": None,
        "persona": None,
        "content": content,
        "client_id": str(uuid.uuid4()),
    }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def stalled(spawn, server: str, **env: str):
    worker = spawn(f"slow-{server}", server=server, **(SLOW_ENV | env))
    alice, bob = await db_call(lambda: (make_user("alice"), make_user("bob")))()
    alice_cookie = await db_call(session_cookie)(alice)
    bob_cookie = await db_call(session_cookie)(bob)
    return worker, alice_cookie, bob_cookie


async def fill_other_tabs(tab: Tab, turns: int = 25) -> None:
    """Send long messages from the normal tab, each stopped at once: every other socket of
    the user gets a copy (~60 KB as UTF-8, 180 KB escaped). More than the 4 MiB a kernel
    buffers for a socket in all: a client that reads nothing is stuck after this."""
    for index in range(turns):
        client_id = await tab.client.send_message(f"filler {index} " + "😀" * 15000)
        accepted = await tab.first("chat.accepted", client_id=client_id)
        await tab.client.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
        await tab.first("chat.done", conversation_id=accepted["conversation_id"])


class Tab:
    """A normal browser tab: reads every frame as it comes, noting when."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await self.client.receive(timeout=120)
                self.frames.append((time.monotonic(), frame))

    async def first(self, kind: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for _, frame in self.frames:
                    if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                        return frame
                await asyncio.sleep(0.02)

    def of(self, conversation_id: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, f) for t, f in self.frames if f.get("conversation_id") == conversation_id]

    async def close(self) -> None:
        self.reader.cancel()
        await self.client.close()


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_never_reading_sockets_freeze_nobody(spawn, persona, server):
    # Replies of about 7 s: the buffers are full and one reply stopped within 3 s.
    worker, alice_cookie, bob_cookie = await stalled(spawn, server, DEMO_REPLY_WORDS="2400")
    tab = Tab(await open_with_cookie(worker, alice_cookie))
    rss_before = rss_kib(worker.process.pid)
    # Three never-reading sockets of Alice's, each starting a long reply; the normal tab
    # follows each reply too (other-tab sync), beside those sockets.
    slow = [NeverReads(worker, alice_cookie) for _ in range(3)]
    try:
        for index, client in enumerate(slow):
            # Long messages: every other tab of Alice's, the slow ones too, gets a copy, and
            # as JSON an emoji takes 12 bytes: the slow sockets' buffers fill at once.
            client.send(send_frame(f"long answer number {index} " + "😀" * 15000))
        async with asyncio.timeout(30):
            while len(accepted := [f for _, f in tab.frames if f["type"] == "chat.accepted"]) < 3:
                await asyncio.sleep(0.02)
        followed, stopped_id = accepted[0]["conversation_id"], accepted[2]["conversation_id"]
        await fill_other_tabs(tab)
        # The slow sockets are full; stop one of their replies from the normal tab.
        await tab.first("chat.delta", conversation_id=stopped_id, seq=60)
        asked = time.monotonic()
        await tab.client.send({"type": "chat.stop", "conversation_id": stopped_id})
        stopped = await tab.first("chat.done", timeout=10, conversation_id=stopped_id)
        stop_latency = time.monotonic() - asked
        assert stopped["status"] == "stopped"

        # Another user can chat while Alice's sockets sit unread. (Bob reads nothing after
        # `accepted`: his client soon stops taking frames, and would wait 10 s to close.)
        bobs = await open_with_cookie(worker, bob_cookie, close_timeout=1)
        await bobs.send_message("hello from bob")
        assert (await bobs.until("chat.accepted"))[-1]["type"] == "chat.accepted"

        done = await tab.first("chat.done", timeout=60, conversation_id=followed)
        assert done["status"] == "complete"
        # Every delta of that reply reached the normal tab, in order, none missing.
        deltas = [(t, f) for t, f in tab.of(followed) if f["type"] == "chat.delta"]
        assert [f["seq"] for _, f in deltas] == list(range(1, len(deltas) + 1))
        assert "".join(f["text"] for _, f in deltas) == done["content"]
        longest_gap = max(b - a for (a, _), (b, _) in itertools.pairwise(deltas))
        rss_after = rss_kib(worker.process.pid)
        # What the server holds for the three sockets stays within their bounds: the outbox,
        # the frame being written, and the server's own buffer (64 KiB), each.
        held = metric(worker, "chat_socket_queued_bytes") + metric(
            worker, "chat_socket_server_buffered_bytes"
        )
        bound = int(SLOW_ENV["SOCKET_BUFFER_BYTES"]) + 70_000 + 65_536
        assert held <= 3 * bound
        print(
            f"\n{server}: longest gap between deltas {longest_gap * 1000:.0f} ms over "
            f"{len(deltas)} deltas; stop answered in {stop_latency * 1000:.0f} ms; "
            f"RSS +{rss_after - rss_before} KiB with 3 never-reading sockets, "
            f"{held / 1024:.0f} KiB held for them"
        )
        await bobs.close()

        # SIGTERM: the worker drains and exits although three sockets never read.
        worker.terminate()
        began = time.monotonic()
        limit = float(SLOW_ENV["GENERATION_DRAIN_SECONDS"]) + float(
            SLOW_ENV["SHUTDOWN_HARD_SECONDS"]
        )
        await asyncio.to_thread(worker.wait, limit + 10)
        print(f"{server}: exited {time.monotonic() - began:.1f} s after SIGTERM")
    finally:
        for client in slow:
            client.close()
        await tab.close()


def server_frames(data: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """The JSON frames and the close code in what a server sent (unmasked frames)."""
    frames: list[dict[str, Any]] = []
    at = 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        if at + length > len(data):
            break  # cut short: the connection was cut mid-frame
        payload = data[at : at + length]
        at += length
        if opcode == 0x1:
            frames.append(json.loads(payload))
        elif opcode == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    return frames, None


def metric(worker: Worker, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def dropped_sockets(worker: Worker) -> float:
    return metric(worker, "chat_slow_sockets_dropped_total")


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_a_socket_that_falls_behind_is_dropped_and_resumes(spawn, persona, server):
    worker, alice_cookie, _ = await stalled(spawn, server)
    tab = Tab(await open_with_cookie(worker, alice_cookie))
    slow = NeverReads(worker, alice_cookie)
    try:
        slow.send(send_frame("a long answer please"))
        filling = asyncio.create_task(fill_other_tabs(tab))
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(dropped_sockets, worker):
                await asyncio.sleep(0.1)
        # Reading at last, two seconds later (a phone back from the background), the client
        # finds a prefix of its reply, then the close code: the server waits its own grace
        # period for the close to get through (Daphne's default would cut it after 1 s).
        await asyncio.sleep(2)
        slow.sock.settimeout(10)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := slow.sock.recv(65536):
                received += chunk
        await filling
        frames, code = server_frames(received)
        assert code == 4008
        assert frames[0]["type"] == "chat.accepted"
        own = frames[0]["conversation_id"]
        deltas = [f for f in frames if f["type"] == "chat.delta" and f["conversation_id"] == own]
        assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))
        assert not any(f["type"] == "chat.done" and f["conversation_id"] == own for f in frames)
        # Reconnected, it resumes from its last seq and has the whole reply, no gap.
        again = await open_with_cookie(worker, alice_cookie)
        await again.send(
            {
                "type": "chat.resume",
                "conversation_id": own,
                "after_seq": deltas[-1]["seq"] if deltas else 0,
            }
        )
        rest = await again.until("chat.done", timeout=60, conversation_id=own)
        assert rest[0]["type"] == "chat.delta", "the reply was still in flight"
        assert rest[0]["seq"] == (deltas[-1]["seq"] if deltas else 0) + 1
        done = rest[-1]
        assert done["status"] == "complete"
        assert deltas_text(deltas) + deltas_text(rest) == done["content"]
        await again.close()
    finally:
        slow.close()
        await tab.close()


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_a_socket_that_floods_frames_is_cut_off(spawn, persona, server):
    # Bob's reply after the flood need not be long.
    worker, alice_cookie, bob_cookie = await stalled(spawn, server, DEMO_REPLY_WORDS="40")
    flooder = NeverReads(worker, alice_cookie)
    flooder.sock.settimeout(10)  # a server that stops reading must not hang the test
    rss_before = rss_kib(worker.process.pid)
    junk = {"type": "chat.resume", "conversation_id": str(uuid.uuid4()), "after_seq": 0}
    junk["padding"] = "x" * 150_000
    sent = 0
    try:
        for _ in range(300):  # 45 MB, as fast as the socket takes it
            flooder.send(junk)
            sent += 1
    except OSError:
        pass  # the server cut the connection
    finally:
        flooder.close()
    assert sent < 300, "the server took the whole flood"
    assert metric(worker, 'chat_refusals_total{code="flood"}') == 1
    # Everyone else is served as before.
    bobs = await open_with_cookie(worker, bob_cookie)
    await bobs.send_message("hello after the flood")
    assert (await bobs.until("chat.done"))[-1]["status"] == "complete"
    print(
        f"\n{server}: flood cut after {sent} frames of 150 KB; "
        f"RSS +{rss_kib(worker.process.pid) - rss_before} KiB"
    )
    await bobs.close()
