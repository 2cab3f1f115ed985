"""Django's PostgreSQL backend, whose pool checks a busy worker's connections without a
round trip.

Each connection is tested as it leaves the pool: after a database restart the pool still
holds dead ones, and a turn must not be refused for them. psycopg_pool's own check
(`ConnectionPool.check_connection`, which Django installs for `CONN_HEALTH_CHECKS`) sends an
empty statement and waits for the answer: a round trip to PostgreSQL before every
transaction, two of the seven a new conversation's turn made.

A live server sends nothing to a connection that sits idle in the pool. When the server goes
away (a restart, a crash, `pg_terminate_backend`), it closes its side, usually after a FATAL
message, and the socket turns readable. So a connection handed out within the last
`QUIET_SECONDS` whose socket has nothing to read passes at once; any other gets psycopg_pool's
full check, which fails on a dead connection, and the pool then discards it and hands out
another. A busy worker reuses its few connections many times a second and skips the round
trip where it costs; a quiet one pays it, as before.

What only the round trip sees is a path that went silent: a NAT or firewall that forgot the
connection, an address moved to another host in a failover. The socket stays quiet until
something is sent, and the answer is a reset. A connection quiet for longer than
`QUIET_SECONDS` gets the round trip; one in use moments before the path broke fails its
turn's first statement instead (`unavailable`, nothing saved), once per pooled connection.

Django takes the pool's `check` from `CONN_HEALTH_CHECKS` alone, so this backend builds the
pool itself, as Django 5.2 does (tests/conversations/test_pool_check.py holds the two
alike), with `check_idle_connection`.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

# A connection handed out less than this long ago, with nothing to read, skips the round trip.
QUIET_SECONDS = 5.0


def check_idle_connection(conn: Any) -> None:
    """psycopg_pool's `check` callback: return at once, or raise for a dead connection."""
    now = time.monotonic()
    recent = now - getattr(conn, "_chat_handed_out", -math.inf) < QUIET_SECONDS
    if conn.closed or not recent or has_input(conn.fileno()):
        ConnectionPool.check_connection(conn)
    conn._chat_handed_out = now


def has_input(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))  # POLLHUP and POLLERR are reported whatever was asked


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's own, which its stubs do not declare.
    _connection_pools: dict[str, ConnectionPool]
    _configure_connection: Callable[[Any], None]

    @property
    def pool(self) -> ConnectionPool | None:
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            kwargs = self.get_connection_params()
            kwargs["autocommit"] = True  # as Django's: it sets autocommit itself later
            pool = ConnectionPool(
                kwargs=kwargs,
                open=False,  # opened on first use, not at startup
                configure=self._configure_connection,
                check=check_idle_connection,
                **({} if options is True else options),
            )
            # Threads may build one each at startup; the first stored wins (as Django's).
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
