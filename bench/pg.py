"""PostgreSQL for the benchmark: a private throw-away cluster, or a database on a shared one.

The full benchmark runs its own cluster (initdb in a temporary folder, its own port, the
default `max_connections` of 100): the "before" design is *meant* to exhaust connections, and
it must not exhaust those of a PostgreSQL that other people's test suites are using. The
smoke run uses a `bench_smoke` database on the shared server and stays far below its limits.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def _bindir() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


class PrivateCluster:
    """initdb + pg_ctl in a temporary folder; trust auth on 127.0.0.1 only."""

    def __init__(self, port: int, max_connections: int = 100) -> None:
        self.port = port
        self.max_connections = max_connections
        self.bindir = _bindir()
        self.datadir = ""
        self.started = False

    @staticmethod
    def available() -> bool:
        if _bindir() is None:
            return False
        if os.geteuid() != 0:
            return True
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root: run it as the postgres system user.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> None:
        assert self.bindir is not None
        self.datadir = tempfile.mkdtemp(prefix="bench-pg-")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._as_owner(
                [
                    f"{self.bindir}/initdb",
                    "-D",
                    self.datadir,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        options = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections}"
        )
        subprocess.run(
            self._as_owner(
                [
                    f"{self.bindir}/pg_ctl",
                    "-D",
                    self.datadir,
                    "-o",
                    options,
                    "-l",
                    f"{self.datadir}/server.log",
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.started = True

    def postmaster_pid(self) -> int:
        """The postmaster's pid (its children are the backends), or 0 when unreadable."""
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as fh:
                return int(fh.readline())
        except (OSError, ValueError):
            return 0

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                subprocess.run(
                    self._as_owner(
                        [f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "stop"]
                    ),
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=60,
                )
            self.started = False
        if self.datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.datadir = ""


def admin_dsn(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def truncate_conversations(url: str) -> None:
    with psycopg.connect(urlunsplit(urlsplit(url)._replace(scheme="postgresql"))) as conn:
        conn.execute("TRUNCATE conversations_message, conversations_conversation CASCADE")


def backends(url: str) -> dict[str, int]:
    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND backend_type = 'client backend' GROUP BY 1",
            [dbname(url)],
        ).fetchall()
    return {state: n for state, n in rows}


def backends_gone(url: str, timeout: float = 5.0) -> dict[str, int]:
    """Backends left once a server has stopped; exiting ones get `timeout` seconds to go."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = backends(url)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def drop_database(url: str) -> None:
    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname(url)))
        )
