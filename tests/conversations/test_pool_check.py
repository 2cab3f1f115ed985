"""The pool's check: no round trip for a live connection, a dead one never reaches a turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from chatproject.postgresql.base import check_idle_connection
from conversations.db import db_call
from tests.conftest import release_shared_thread


def conninfo() -> str:
    params = connection.get_connection_params()
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in {"host", "port", "user", "dbname"}}
    )


def terminate(pids: list[int]) -> None:
    with psycopg.connect(conninfo(), autocommit=True) as admin:
        for pid in pids:
            # Waits (up to 5 s) until the backend is gone, as a restart would leave it.
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def test_a_live_connection_passes_without_a_round_trip(tmp_path: Path) -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as out:
            conn.pgconn.trace(out.fileno())
            check_idle_connection(conn)
            conn.pgconn.untrace()
        assert trace.read_text() == ""  # nothing was sent to PostgreSQL, nothing read


def test_a_connection_the_server_ended_fails_the_check() -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        terminate([conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            check_idle_connection(conn)


def count_users() -> int:
    return get_user_model().objects.count()


def pool_backends() -> list[int]:
    """The pids of every connection the pool holds, each taken out once."""
    pool = connection.pool  # type: ignore[attr-defined]
    assert pool is not None
    taken = [pool.getconn() for _ in range(pool.get_stats()["pool_size"])]
    try:
        return [conn.info.backend_pid for conn in taken]
    finally:
        for conn in taken:
            pool.putconn(conn)


@pytest.fixture
def released_main(alice: object) -> None:
    connection.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_turns_after_the_servers_connections_ended_find_live_ones(released_main) -> None:
    """What a database restart leaves in the pool: connections the server has closed. Every
    call after it still succeeds; without a check the first would fail."""
    await release_shared_thread()
    await asyncio.gather(*(db_call(count_users)() for _ in range(4)))
    pids = await asyncio.to_thread(pool_backends)
    assert pids

    await asyncio.to_thread(terminate, pids)

    counts = await asyncio.gather(*(db_call(count_users)() for _ in range(len(pids) + 2)))
    assert counts == [1] * (len(pids) + 2)
    assert not set(await asyncio.to_thread(pool_backends)) & set(pids)
