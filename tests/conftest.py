"""Shared fixtures. Alice owns things; Bob must never see them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket as sockets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connection, connections
from django.test import Client

from accounts.models import Profile
from conversations.db import db_call, loop_connections, turn_threads
from personas.models import Persona

User = get_user_model()
PASSWORD = "correct-horse-battery-staple"


@functools.cache
def password_hash() -> str:
    """PASSWORD hashed once. The shipped hasher spends about 0.3 s a hash by design, and most
    tests make a user or two; every user shares this hash (and its salt), which signs in with
    PASSWORD as any other would, in the servers the tests start too."""
    return make_password(PASSWORD)


def make_user(username: str, display_name: str = "") -> Any:
    user = User.objects.create(username=username, password=password_hash())
    Profile.objects.filter(user=user).update(display_name=display_name)
    return user


@pytest.fixture(scope="session", autouse=True)
def _loop_connections_closed(django_db_setup: Any) -> Iterator[None]:
    """The event loop's begin connections (conversations/db.py) are closed before the test
    database is dropped: PostgreSQL refuses to drop a database in use."""
    yield
    loop_connections.close_all()


@pytest.fixture(autouse=True)
def _no_loop_connections_kept() -> None:
    """Each test starts with none of the event loop's turn connections of the one before:
    counting backends counts the test's own."""
    loop_connections.close_all()


@pytest.fixture(autouse=True)
def _chat_defaults(settings: Any) -> None:
    # Tests send far more than a person would; the rate-limit test sets its own limit.
    settings.MESSAGES_PER_MINUTE = 100_000
    # Fuzzing sends frames far faster than a person; the flood test sets the real limit.
    settings.SOCKET_FRAMES_PER_SECOND = 100_000
    # pytest owns this process's signals.
    settings.GRACEFUL_SHUTDOWN = False


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    # Every test client comes from 127.0.0.1: one test's signups must not count against the
    # next (the signup counter lives in the local cache; login failures roll back with the
    # test database).
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def alice(django_db_blocker: Any) -> Any:
    return make_user("alice", "Alice")


@pytest.fixture
def bob(django_db_blocker: Any) -> Any:
    return make_user("bob", "Bob")


@pytest.fixture
def released_main(alice: Any) -> None:
    """Alice saved, and the test thread's connection back in the pool: counting what db_call
    leaves checked out must not count the test's own."""
    connection.close()


def count_users() -> int:
    return User.objects.count()


@pytest.fixture
def persona(django_db_blocker: Any) -> Persona:
    return Persona.objects.create(
        slug="assistant",
        name="Assistant",
        description="Clear and friendly.",
        system_prompt="You are a helpful assistant.",
        avatar="💬",
        is_default=True,
    )


@pytest.fixture
def pirate(django_db_blocker: Any) -> Persona:
    return Persona.objects.create(
        slug="pirate",
        name="Captain Redbeard",
        description="Answers in pirate speak.",
        system_prompt="You are a pirate.",
        avatar="🏴‍☠️",
        order=1,
    )


@pytest.fixture
def one_rate_window() -> None:
    """`MESSAGES_PER_MINUTE` counts each calendar minute afresh: a test that sends up to the
    limit starts with at least 15 s of its minute left, or its last send, in the next
    minute, would be allowed."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.05)


@pytest.fixture
def fast_demo(settings: Any) -> Any:
    settings.DEMO_TOKEN_DELAY_MS = 1
    settings.DEMO_REPLY_WORDS = 30
    settings.DEMO_FAIL_AFTER_WORDS = None
    return settings


def subprocess_database_url(dbname: str | None = None) -> str:
    """The pytest-django test database as a DATABASE_URL for a server in a subprocess."""
    from urllib.parse import quote

    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "postgres")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{dbname or db['NAME']}"


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class Socket:
    """A WebSocket client speaking the protocol's JSON frames."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def send_raw(self, text: str | None = None, data: bytes | None = None) -> None:
        await self.communicator.send_to(text_data=text, bytes_data=data)

    async def receive(self, timeout: float = 10, *, updates: bool = False) -> dict[str, Any]:
        """The next frame; `conversation.updated` announcements are skipped unless asked for."""
        while True:
            frame: dict[str, Any] = json.loads(await self.communicator.receive_from(timeout))
            if updates or frame["type"] != "conversation.updated":
                return frame

    async def receive_until(self, kind: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Frames up to and including the first of type `kind`."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout, updates=True)
                frames.append(frame)
                if frame["type"] == kind:
                    return frames

    async def receive_type(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        """The first frame of type `kind`, skipping others."""
        frames = await self.receive_until(kind, timeout)
        return frames[-1]

    async def nothing_pending(self, timeout: float = 0.2) -> bool:
        return await self.communicator.receive_nothing(timeout)

    async def send_message(
        self,
        content: str,
        *,
        conversation_id: str | None = None,
        persona: str | None = None,
        client_id: str | None = None,
        **branch: str | None,
    ) -> str:
        """Send a message; `parent_id=...` (a reply's id, or None) sends it as a version."""
        client_id = client_id or str(uuid.uuid4())
        await self.send(
            {
                "type": "chat.send",
                "conversation_id": conversation_id,
                "persona": persona,
                "content": content,
                "client_id": client_id,
                **branch,
            }
        )
        return client_id

    async def regenerate(
        self, conversation_id: str, message_id: str, *, client_id: str | None = None
    ) -> str:
        client_id = client_id or str(uuid.uuid4())
        await self.send(
            {
                "type": "chat.regenerate",
                "conversation_id": conversation_id,
                "message_id": message_id,
                "client_id": client_id,
            }
        )
        return client_id

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.communicator.disconnect()


Connect = Callable[..., Awaitable[Socket]]


@pytest_asyncio.fixture
async def ws() -> AsyncIterator[Connect]:
    """Open sockets through the real ASGI stack (origin check, session auth, routing)."""
    from chatproject.asgi import application
    from conversations.replies import worker
    from conversations.replies.registry import registry

    opened: list[Socket] = []

    async def connect(
        user: Any = None,
        *,
        origin: bytes = b"http://localhost",
        host: bytes = b"localhost",
        expect: bool = True,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> Socket:
        headers = [(b"host", host), (b"origin", origin), *(extra or [])]
        if user is not None:
            cookie = await db_call(session_cookie)(user)
            headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        connected, _ = await communicator.connect(timeout=10)
        socket = Socket(communicator)
        opened.append(socket)
        assert connected is expect, "handshake accepted" if connected else "handshake refused"
        return socket

    yield connect
    for socket in opened:
        await socket.disconnect()
    # Generations outlive their sockets by design; let them end before the database goes.
    pending = registry.tasks | registry.side_tasks
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 60)
    await worker.stop()


def admin_dsn() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        user=db.get("USER") or "postgres",
        password=db.get("PASSWORD") or None,
        dbname="postgres",
    )


@pytest.fixture
def pg_backends() -> Iterator[Callable[[], dict[str, int]]]:
    """Counts the test database's backends by state, from a connection of its own."""
    if connection.vendor != "postgresql":
        pytest.skip("connection accounting needs PostgreSQL")
    name = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(admin_dsn(), autocommit=True) as counter:

        def count() -> dict[str, int]:
            rows = counter.execute(
                "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend' "
                "GROUP BY 1",
                [name],
            ).fetchall()
            return {state: n for state, n in rows}

        yield count


def settled(count: Callable[[], dict[str, int]], quiet: float = 0.3) -> dict[str, int]:
    """Backends once the count has stopped changing: closed ones take a moment to exit."""
    import time

    last, since = count(), time.monotonic()
    deadline = since + 5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


async def release_shared_thread() -> None:
    """Close what earlier tests left open on asgiref's shared sync thread.

    Test helpers such as Django's AsyncClient run ORM code there outside any request, so
    nothing closes it; counting "connections checked out" must not count that leftover.
    """
    from asgiref.sync import sync_to_async

    await sync_to_async(connections.close_all)()


def pool_checked_out(window: float = 0.25) -> int:
    """Connections out of the pool: the least seen over a short window.

    psycopg's `pool_size` also counts connections the pool is still opening in the
    background as it grows, which reads as "checked out" for a moment; a connection that
    was not given back is out for every reading.
    """
    import time

    pool = getattr(connection, "pool", None)
    if pool is None:
        return 0
    readings = []
    deadline = time.monotonic() + window
    while True:
        stats = pool.get_stats()
        readings.append(int(stats["pool_size"] - stats["pool_available"]))
        if readings[-1] == 0 or time.monotonic() >= deadline:
            return min(readings)
        time.sleep(0.02)


@pytest.fixture
def pool_off() -> Iterator[None]:
    """Run with plain connections: every open connection is then a backend of its own."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    options = connections.settings["default"]["OPTIONS"]
    connection.close()
    connection.close_pool()  # type: ignore[attr-defined]
    saved = options.pop("pool", None)
    yield
    connection.close()
    if saved is not None:
        options["pool"] = saved


@pytest.fixture
def redis_layer(settings: Any) -> Any:
    """Switch the channel layer to the real Redis for one test."""
    import os

    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not answering at {url}: {exc}")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "conversations.replies.layer.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": url, "socket_timeout": 15}],
                "prefix": f"test-{uuid.uuid4().hex[:8]}",
            },
        }
    }
    return url


class TurnThreads:
    """Slow database work elsewhere (an export, a re-send's lookup) holding every turn
    thread, until `free`."""

    def __init__(self) -> None:
        self._free = threading.Event()
        self._held: asyncio.Future[Any] | None = None

    async def hold(self) -> None:
        threads = turn_threads()
        assert threads > 0
        self._held = asyncio.gather(*(db_call(self._free.wait)(20) for _ in range(threads)))
        await asyncio.sleep(0.05)  # every thread has taken its wait

    async def free(self) -> None:
        self._free.set()
        if self._held is not None:
            await self._held


@pytest_asyncio.fixture
async def turn_threads_held() -> AsyncIterator[TurnThreads]:
    held = TurnThreads()
    yield held
    await held.free()


@contextlib.contextmanager
def socket_nobody_listens_on() -> Iterator[str]:
    """A local port bound but not listening: a connection to it is refused at once."""
    with sockets.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield str(bound.getsockname()[1])
