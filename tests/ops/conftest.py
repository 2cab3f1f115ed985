"""Real processes for the operations tests: throwaway PostgreSQL and Redis servers, Daphne.

Nothing here stops or changes the machine's own PostgreSQL or Redis, which other test runs
share: servers that a test stops and starts are its own, on free loopback ports.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "ops"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def cookies(self) -> dict[str, str]:
        """Set-Cookie values, read by hand: a cookie jar would hide Secure cookies on http."""
        found = {}
        for header in self.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            found[name.strip()] = rest.split(";", 1)[0]
        return found


def fetch(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Response:
    """One request, no redirects followed, no cookies kept."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers=headers or {})
        raw = conn.getresponse()
        return Response(raw.status, raw.headers, raw.read())
    finally:
        conn.close()


def needs_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...)")


# --- throwaway PostgreSQL ---------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own under /tmp, on a free port, that a test may stop.

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    """

    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin)")
        self.bindir = bindir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="ops-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root needs a `postgres` user to run a server")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


# --- throwaway Redis --------------------------------------------------------------------


class ThrowawayRedis:
    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is missing")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: port_open(self.port), 10, "redis-server start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
        wait_for(lambda: not port_open(self.port), 5, "redis-server stop")


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- Daphne -----------------------------------------------------------------------------


class Daphne:
    """One Daphne worker of this project in a subprocess, as deploy/daphne@.service runs it."""

    def __init__(self, env: dict[str, str], name: str = "daphne") -> None:
        self.port = free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        # The test run's own choices must not leak into the worker.
        self.env.pop("DATABASE_TEST_NAME", None)
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        daphne = str(Path(sys.executable).with_name("daphne"))
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                daphne, "--bind", "127.0.0.1", "--port", str(self.port), "--proxy-headers",
                "--application-close-timeout", "5", "chatproject.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def wait_ready(self, timeout: float = 30) -> None:
        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"Daphne exited early; see {self.log_path}:\n{self.logs()}")
            try:
                return fetch("GET", f"{self.url}/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, timeout, f"Daphne on port {self.port} answering /healthz", 0.1)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


class UnitWorker(Daphne):
    """One worker started by the very command deploy/uvicorn@.service runs (its ExecStart,
    with this virtualenv's binary and a free port for %i)."""

    UNIT = ROOT / "deploy" / "uvicorn@.service"

    def command(self) -> list[str]:
        text = self.UNIT.read_text().replace("\\\n", " ")
        line = next(row for row in text.splitlines() if row.startswith("ExecStart="))
        binary, *arguments = shlex.split(line.removeprefix("ExecStart="))
        local = str(Path(sys.executable).with_name(Path(binary).name))
        return [local, *(word.replace("%i", str(self.port)) for word in arguments)]

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()


def daphne_env(**overrides: str) -> dict[str, str]:
    """A production-like worker environment; tests override what they need."""
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "ops-tests-" + "k" * 60,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LLM_PROVIDER": "demo",
        "DEMO_TOKEN_DELAY_MS": "5",
        "DEMO_REPLY_WORDS": "40",
        "DEMO_FAIL_AFTER_WORDS": "",
        "METRICS_TOKEN": "",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "DB_POOL_MAX_SIZE": "4",
    }
    env.update(overrides)
    return env
