"""The pool's check: no round trip for a connection in use moments ago, and a dead one never
reaches a turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoPostgreSQL

from chatproject.postgresql.base import QUIET_SECONDS, DatabaseWrapper, check_idle_connection
from conversations.db import db_call
from tests.conftest import admin_dsn, count_users, release_shared_thread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _pooled_postgresql() -> None:
    if connection.vendor != "postgresql" or connection.pool is None:  # type: ignore[attr-defined]
        pytest.skip("needs PostgreSQL with Django's pool (DATABASE_URL=postgres://...)")


def terminate(pids: list[int]) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        for pid in pids:
            # Waits (up to 5 s) until the backend is gone, as a restart would leave it.
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def traced(conn: psycopg.Connection[Any], path: Path) -> str:
    """What one check sent PostgreSQL and read back, as libpq traces it."""
    with path.open("w") as out:
        conn.pgconn.trace(out.fileno())
        check_idle_connection(conn)
        conn.pgconn.untrace()
    return path.read_text()


def test_a_connection_in_use_moments_ago_passes_without_a_round_trip(tmp_path: Path) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        assert traced(conn, tmp_path / "first") != ""  # never handed out: the full check
        conn.execute("SELECT 1")

        assert traced(conn, tmp_path / "again") == ""  # nothing sent, nothing read


def test_a_connection_quiet_for_long_gets_the_round_trip(tmp_path: Path) -> None:
    """A path gone silent (a NAT that forgot it, a failover) shows only when something is
    sent: a connection quiet for longer than QUIET_SECONDS is asked."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        check_idle_connection(conn)
        conn._chat_handed_out -= QUIET_SECONDS + 1  # type: ignore[attr-defined]

        assert "Query" in traced(conn, tmp_path / "quiet")


def test_a_connection_the_server_ended_fails_the_check() -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        check_idle_connection(conn)  # handed out just now: only its socket decides
        terminate([conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            check_idle_connection(conn)


def test_the_pool_is_built_as_djangos_but_for_its_check(settings: Any) -> None:
    """The backend builds the pool itself (Django takes `check` from CONN_HEALTH_CHECKS
    alone): on a Django upgrade that changes how, this fails rather than drifting."""
    settings_dict = {**settings.DATABASES["default"], "CONN_HEALTH_CHECKS": True}
    pools = []
    for wrapper, alias in ((DjangoPostgreSQL, "pool-as-django"), (DatabaseWrapper, "pool-ours")):
        pools.append(wrapper(settings_dict, alias).pool)  # type: ignore[attr-defined]
    theirs, ours = pools
    try:
        assert ours.kwargs == theirs.kwargs
        assert (ours.min_size, ours.max_size, ours.timeout, ours.max_idle, ours.max_lifetime) == (
            theirs.min_size,
            theirs.max_size,
            theirs.timeout,
            theirs.max_idle,
            theirs.max_lifetime,
        )
        assert ours._configure.__func__ is theirs._configure.__func__
        assert ours._check is check_idle_connection
    finally:
        for alias in ("pool-as-django", "pool-ours"):
            DjangoPostgreSQL._connection_pools.pop(alias, None)  # type: ignore[attr-defined]


def pool_backends() -> list[int]:
    """The pids of every connection the pool holds, each taken out once."""
    pool = connection.pool  # type: ignore[attr-defined]
    taken = [pool.getconn() for _ in range(pool.get_stats()["pool_size"])]
    try:
        return [conn.info.backend_pid for conn in taken]
    finally:
        for conn in taken:
            pool.putconn(conn)


@pytest.mark.asyncio
async def test_turns_after_the_servers_connections_ended_find_live_ones(
    released_main, monkeypatch
) -> None:
    """What a database restart leaves in the pool: connections the server has closed, handed
    out moments ago. Every call after it still succeeds; without a check the first would
    fail."""
    # Every connection counts as in use moments ago: only its socket can tell it is dead.
    monkeypatch.setattr("chatproject.postgresql.base.QUIET_SECONDS", 3600.0)
    await release_shared_thread()
    await asyncio.gather(*(db_call(count_users)() for _ in range(4)))
    pids = await asyncio.to_thread(pool_backends)
    assert pids

    await asyncio.to_thread(terminate, pids)

    counts = await asyncio.gather(*(db_call(count_users)() for _ in range(len(pids) + 2)))
    assert counts == [1] * (len(pids) + 2)
    assert not set(await asyncio.to_thread(pool_backends)) & set(pids)
