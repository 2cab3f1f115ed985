"""Real Daphne workers over the test database and a real Redis, driven by real WebSocket
clients (the `websockets` library), on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from django.conf import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import session_cookie, subprocess_database_url

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "workers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own: its command counts are this test's alone, and it
    can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - a server, not awaited on
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        probe = redis.asyncio.Redis.from_url(self.url)
        for _ in range(100):
            try:
                await probe.ping()
                break
            except (redis.ConnectionError, OSError):
                await asyncio.sleep(0.05)
        await probe.aclose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    async def calls(self) -> dict[str, int]:
        """Commands this server ran so far, by name (INFO commandstats)."""
        probe = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        stats = await probe.info("commandstats")
        await probe.aclose()
        return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def make_run_uvicorn_options() -> list[str]:
    """Uvicorn's options as `make run` gives them (all but the app, host and port)."""
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    command = recipe[recipe.index("bin/uvicorn") :].replace("\\\n", " ").split()
    options, skip = [], False
    for word in command[2:]:
        if skip:
            skip = False
        elif word in {"--host", "--port"}:
            skip = True
        else:
            options.append(word)
    return options


class Worker:
    """One server process: Daphne, or Uvicorn as `make run` starts it. `kill()` is `kill -9`;
    `terminate()` is SIGTERM."""

    def __init__(self, name: str, env: dict[str, str], server: str = "daphne") -> None:
        self.name = name
        self.server = server
        self.port = free_port()
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        OUTPUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT / f"{name}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def command(self) -> list[str]:
        binary = str(Path(sys.executable).with_name(self.server))
        if self.server == "uvicorn":
            return [
                binary,
                "chatproject.asgi:application",
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *make_run_uvicorn_options(),
            ]
        return [binary, "-b", "127.0.0.1", "-p", str(self.port), "chatproject.asgi:application"]

    def start(self) -> Worker:
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=1
                ) as response,
            ):
                if response.status == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer /healthz within 30 s")
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if hasattr(self, "log"):
            self.log.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def worker_env(redis_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "REDIS_URL": redis_url,
        "DJANGO_DEBUG": "true",
        "LLM_PROVIDER": "demo",
        "DEMO_TOKEN_DELAY_MS": "20",
        "DEMO_REPLY_WORDS": "100",
        "DEMO_FAIL_AFTER_WORDS": "",
        "DB_POOL_MAX_SIZE": "4",
        "HEARTBEAT_SECONDS": "0.5",
        "HEARTBEAT_TTL": "2",
        "RECOVERY_INTERVAL_SECONDS": "1",
        "GRACEFUL_SHUTDOWN": "true",
        "GENERATION_DRAIN_SECONDS": "3",
        "MESSAGES_PER_MINUTE": "1000",
        "MAX_GENERATIONS_PER_USER": "100",
    }
    env.pop("DATABASE_TEST_NAME", None)
    return env


@pytest.fixture
def spawn(worker_env: dict[str, str]) -> Iterator[Any]:
    started: list[Worker] = []

    def start(name: str, server: str = "daphne", **overrides: str) -> Worker:
        worker = Worker(name, {**worker_env, **overrides}, server).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


class Client:
    """A browser tab: one authenticated socket speaking the protocol."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def send_message(self, content: str, conversation_id: str | None = None) -> str:
        client_id = str(uuid.uuid4())
        await self.send(
            {
                "type": "chat.send",
                "conversation_id": conversation_id,
                "persona": None,
                "content": content,
                "client_id": client_id,
            }
        )
        return client_id

    async def receive(self, timeout: float = 20) -> dict[str, Any]:
        """The next frame, skipping `conversation.updated` announcements."""
        while True:
            raw = await asyncio.wait_for(self.connection.recv(), timeout)
            frame: dict[str, Any] = json.loads(raw)
            if frame["type"] != "conversation.updated":
                return frame

    async def until(self, kind: str, timeout: float = 30, **match: Any) -> list[dict[str, Any]]:
        """Frames up to the first of type `kind` whose fields match."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                frames.append(frame)
                if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frames

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()


async def open_client(worker: Worker, user: Any) -> Client:
    from conversations.db import db_call

    return await open_with_cookie(worker, await db_call(session_cookie)(user))


def deltas_text(frames: list[dict[str, Any]], message_id: str | None = None) -> str:
    return "".join(
        f["text"]
        for f in frames
        if f["type"] == "chat.delta" and (message_id is None or f["message_id"] == message_id)
    )


class ScratchPostgres:
    """A PostgreSQL server of the test's own, so it can be stopped and restarted."""

    def __init__(self) -> None:
        versions = sorted(Path("/usr/lib/postgresql").iterdir())
        if not versions:
            pytest.skip("PostgreSQL server binaries are not installed")
        self.bin = versions[-1] / "bin"
        self.dir = Path(tempfile.mkdtemp(prefix="scratch-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            self.bin / "initdb",
            "-D",
            self.data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )
        self.start()
        self._as_postgres(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "chat")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/chat"

    def _as_postgres(self, *command: Any) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, command)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._as_postgres(
            self.bin / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            self.dir / "server.log",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def scratch_pg() -> Iterator[ScratchPostgres]:
    if os.geteuid() != 0:
        pytest.skip("starting a scratch PostgreSQL needs root (runuser)")
    server = ScratchPostgres()
    yield server
    server.destroy()


def scratch_cookies(url: str, usernames: list[str]) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_TEST_NAME", None)
    result = subprocess.run(
        [sys.executable, "-m", "tests.workers.scratch_setup", *usernames],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cookies: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])["cookies"]
    return cookies


async def open_with_cookie(
    worker: Worker, cookie: str, attempts: int = 5, close_timeout: float = 10
) -> Client:
    """Connect as the page does: a failed handshake is retried with backoff."""
    for attempt in range(attempts):
        try:
            connection = await connect(
                worker.url,
                additional_headers={
                    "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}",
                    "Origin": f"http://127.0.0.1:{worker.port}",
                },
                open_timeout=10,
                close_timeout=close_timeout,
            )
            return Client(connection)
        except InvalidStatus:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
