"""The app behind a real PgBouncer in transaction pooling mode (Debian's /usr/sbin/pgbouncer).

Transaction pooling hands each transaction to whichever server connection is free, so
nothing may outlive a transaction on the server: no prepared statements, no `WITH HOLD`
cursors (Django's `.iterator()` outside `atomic()`), no session `SET`, advisory locks,
`LISTEN` or temporary tables. `DB_PGBOUNCER=true` is the setting that says so. The pooler
here runs with `server_round_robin` and a pool smaller than the turns, so consecutive
transactions of one client really do land on different server connections.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from websockets.sync.client import connect
from websockets.typing import Origin

from conversations.models import Message
from tests.conftest import make_user, session_cookie
from tests.ops.conftest import (
    OUTPUT,
    UnitWorker,
    daphne_env,
    fetch,
    free_port,
    needs_postgresql,
    port_open,
    wait_for,
)

PGBOUNCER = Path("/usr/sbin/pgbouncer")
POOL_SIZE = 2  # server connections PgBouncer keeps to PostgreSQL for the database
TURNS = 6  # concurrent turns: three times the pool


@dataclass
class PgBouncer:
    port: int
    dbname: str
    log: Path

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def show(self, what: str) -> list[tuple[Any, ...]]:
        """`SHOW <what>` on PgBouncer's admin console."""
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer",
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,  # the console speaks simple queries only
        ) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SHOW {what}")
            return cursor.fetchall()


def pgbouncer_ini(tmp: Path, port: int, dbname: str, db: dict[str, Any]) -> str:
    return f"""
[databases]
{dbname} = host={db.get("HOST") or "127.0.0.1"} port={db.get("PORT") or 5432} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp}/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = {POOL_SIZE}
max_client_conn = 200
server_round_robin = 1
ignore_startup_parameters = extra_float_digits
logfile = {tmp}/pgbouncer.log
pidfile =
"""


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    needs_postgresql()
    if not PGBOUNCER.exists():
        pytest.skip("pgbouncer is missing (apt-get install pgbouncer)")
    db = settings.DATABASES["default"]
    port = free_port()
    # As root, PgBouncer runs as `postgres`, who cannot enter pytest's private tmp_path.
    tmp = Path(tempfile.mkdtemp(prefix="ops-pgbouncer-"))
    tmp.chmod(0o755)
    (tmp / "users.txt").write_text(f'"{db.get("USER") or "postgres"}" ""\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(tmp, port, db["NAME"], db))
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    if user:
        owner = pwd.getpwnam("postgres")
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(
        [str(PGBOUNCER), *user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: port_open(port), 10, "pgbouncer listening")
        yield PgBouncer(port, db["NAME"], tmp / "pgbouncer.log")
    finally:
        process.terminate()
        process.wait(10)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        if (tmp / "pgbouncer.log").exists():
            shutil.copy(tmp / "pgbouncer.log", OUTPUT / "pgbouncer.log")
        shutil.rmtree(tmp, ignore_errors=True)


def chat_turn(ws_url: str, origin: str, cookie: str, content: str) -> list[dict[str, Any]]:
    """One turn over the socket, as the page sends it; every frame up to `chat.done`."""
    with connect(
        ws_url,
        origin=Origin(origin),
        additional_headers={"Cookie": cookie},
        proxy=None,
        open_timeout=10,
    ) as socket:
        socket.send(
            json.dumps(
                {
                    "type": "chat.send",
                    "conversation_id": None,
                    "persona": None,
                    "content": content,
                    "client_id": str(uuid.uuid4()),
                }
            )
        )
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] not in ("chat.done", "chat.error"):
            frames.append(json.loads(socket.recv(timeout=30)))
    return frames


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_turns_behind_pgbouncer_in_transaction_mode_are_streamed_saved_and_readable(
    alice: Any, persona: Any, pgbouncer: PgBouncer
) -> None:
    worker = UnitWorker(
        daphne_env(
            DATABASE_URL=pgbouncer.url,
            DB_PGBOUNCER="true",
            # The test's own session cookie must be valid in the worker.
            DJANGO_SECRET_KEY=settings.SECRET_KEY,
            # Each worker's own pool may be larger than PgBouncer's: that is the point.
            DB_POOL_MAX_SIZE=str(TURNS),
            DEMO_TOKEN_DELAY_MS="10",
        ),
        name="pgbouncer-worker",
    )
    worker.start()
    try:
        worker.wait_ready()
        # One user each: a user's tabs all see each of their replies, which is another test.
        users = [alice, *(make_user(f"user{i}") for i in range(1, TURNS))]
        cookies = [f"{settings.SESSION_COOKIE_NAME}={session_cookie(u)}" for u in users]
        ws_url = worker.url.replace("http://", "ws://") + "/ws/chat/"
        with ThreadPoolExecutor(TURNS) as pool:
            turns = list(
                pool.map(
                    lambda c: chat_turn(ws_url, worker.url, c, "Hello through the pooler"),
                    cookies,
                )
            )

        for frames in turns:
            assert frames[0]["type"] == "chat.accepted", frames
            done = frames[-1]
            assert (done["type"], done.get("status")) == ("chat.done", "complete"), frames
            text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
            assert len(text.split()) == 40
            saved = Message.objects.get(id=frames[0]["message_id"])
            assert (saved.status, saved.content) == ("complete", text)

        # Each conversation, read back over HTTP by the page's own call, several at once.
        def read_back(frames: list[dict[str, Any]], cookie: str) -> tuple[int, Any]:
            answer = fetch(
                "GET",
                f"{worker.url}/api/conversations/{frames[0]['conversation_id']}/",
                headers={"Cookie": cookie, "X-Forwarded-Proto": "https"},
            )
            return answer.status, json.loads(answer.body) if answer.status == 200 else answer.text

        with ThreadPoolExecutor(TURNS) as pool:
            pages = list(pool.map(read_back, [*turns, *turns], [*cookies, *cookies]))
        for frames, (status, page) in zip([*turns, *turns], pages, strict=True):
            assert status == 200, page[:2000]
            reply = page["messages"][-1]
            assert reply["id"] == frames[0]["message_id"]
            assert (reply["status"], reply["content"]) == ("complete", frames[-1]["content"])

        # The traffic went through the pooler, which never opened more than its pool.
        servers = pgbouncer.show("SERVERS")
        assert 0 < len(servers) <= POOL_SIZE
        logs = worker.logs()
        assert "does not exist" not in logs, logs[-3000:]
    finally:
        worker.stop()
