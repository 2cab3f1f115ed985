"""The ways async chat code reaches the database.

`db_call(func)` runs a sync ORM function on a worker thread and gives its connection back to
the pool *inside* that call, before the await returns. Relying on the connection being closed
after the call is not enough: a connection left open there stays checked out of the pool until
the same thread happens to run again, and that is exactly the leak this project exists to fix.

`turn_call(steps, on_thread)` runs a turn's begin (`services.turn_begin_steps`) and its
reply's save (`services.reply_save_steps`) on the event loop itself, on PostgreSQL
(`loop_run`): their statements go out on an async psycopg connection of the loop's own few
(`LoopConnections`), with no thread to hop to and back. Under load that hop, and the thread's
wait for the core and the GIL between its round trips, were most of a begin's time
(bench/results/turn-on-loop). The connection goes back as soon as the steps end, as with
`db_call`. A begin that takes a rare path (a re-send, an edit, attachments) says so before it
writes anything, and runs again on a thread. A socket handshake's session and user lookup
(`services.socket_user_steps`) runs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import psycopg
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import AsyncClientCursor, AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from chatproject.postgresql.base import QUIET_SECONDS, has_input
from conversations import metrics

if TYPE_CHECKING:
    from conversations.turn_sql import Steps

P = ParamSpec("P")
R = TypeVar("R")


def released(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a sync function so every connection it opened is back in the pool on return."""

    @functools.wraps(func)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                if not connection.in_atomic_block:
                    connection.close()

    return inner


_executor: ThreadPoolExecutor | None = None


def _turn_executor() -> ThreadPoolExecutor | None:
    """A thread pool for the turn's self-contained calls, or None to use Channels' one thread.

    By default every `database_sync_to_async` call of a process queues on one shared thread,
    so under a burst the two short transactions of each turn wait behind everyone else's
    (measured in bench/: p99 time to first token 376 ms at 100 streams, 54 ms with a pool).
    Each call here opens, uses and gives back its own connection, so it may run on any
    thread.
    """
    global _executor
    if settings.DB_CALL_THREADS <= 0:
        return None
    if _executor is None:
        _executor = ThreadPoolExecutor(settings.DB_CALL_THREADS, thread_name_prefix="db-call")
    return _executor


def turn_threads() -> int:
    """How many turn threads there are (0: Channels' one shared thread)."""
    executor = _turn_executor()
    return executor._max_workers if executor is not None else 0


def db_call(func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    executor = _turn_executor()
    if executor is None:
        return database_sync_to_async(released(func))
    return database_sync_to_async(released(func), thread_sensitive=False, executor=executor)


def io_call(func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`db_call` for work that first waits on something other than the database (a file
    written to S3) and then runs its short transaction. It runs on the event loop's default
    threads, not the turns' few (`DB_CALL_THREADS`): a handful of slow uploads must not keep
    every turn, reply save and socket handshake of the worker waiting. Its connection goes
    back inside the call, as with `db_call`. SQLite keeps its one shared thread."""
    if _turn_executor() is None:
        return database_sync_to_async(released(func))
    return database_sync_to_async(released(func), thread_sensitive=False)


# --- the turn's statements on the event loop -------------------------------------------------


class NeedsThread(Exception):
    """The steps took a path that uses the ORM (`turn_sql.ORM`): run them on a thread."""


def on_loop() -> bool:
    """Whether a turn's statements run on the event loop: PostgreSQL, unless TURN_DB_ON_LOOP
    is off or a role is assumed per connection (Django's `assume_role`, which this path
    would not set)."""
    database = connections[DEFAULT_DB_ALIAS].settings_dict
    return (
        settings.TURN_DB_ON_LOOP
        and database["ENGINE"] in _POSTGRESQL_ENGINES
        and not database.get("OPTIONS", {}).get("assume_role")
    )


_POSTGRESQL_ENGINES = ("chatproject.postgresql", "django.db.backends.postgresql")


async def turn_call(
    steps: Callable[..., Steps[R]],
    on_thread: Callable[..., R],
    *,
    atomic: bool,
    ahead: Callable[[Any], object] | None = None,
    **kwargs: Any,
) -> R:
    """`steps(**kwargs)` on the event loop (`loop_run`) where it can be; else, or where the
    steps need the ORM, `on_thread(**kwargs)` on a turn thread (`db_call`). `on_thread` is
    the same steps run by `turn_sql.run` in the transaction they need. `ahead` is called
    with what the steps expect to return, before their last write (`turn_sql.Ahead`), on
    the event loop only; and with None if they then go to a thread after all, whose
    result is never that."""
    if on_loop():
        try:
            # Shielded: a caller cancelled meanwhile (its socket gone) does not cut the
            # statements short, as it never stopped a thread's.
            return await asyncio.shield(loop_run(steps(**kwargs), atomic=atomic, ahead=ahead))
        except NeedsThread:
            # A rare path (a re-send, an edit, a session to check in full); the write that
            # found a re-send's message is one, after its steps told `ahead` of a result.
            if ahead is not None:
                ahead(None)
    return await db_call(on_thread)(**kwargs)


async def loop_run(
    steps: Steps[R], *, atomic: bool, ahead: Callable[[Any], object] | None = None
) -> R:
    """Run `steps` on one of the loop's connections, in a transaction if `atomic`, else each
    statement on its own (autocommit). Raises NeedsThread, with nothing written, where the
    steps need the ORM; database errors come as Django's (`DatabaseError` and its kin), as
    from `db_call`."""
    wrapper = connections[DEFAULT_DB_ALIAS]  # looked up once: each lookup costs a context lookup
    with wrapper.wrap_database_errors:
        async with loop_connections.cursor(wrapper.settings_dict) as cursor:
            if not atomic:
                return await _drive(cursor, steps, ahead)
            async with cursor.connection.transaction():
                return await _drive(cursor, steps, ahead)


async def _drive(
    cursor: AsyncCursor[Any], steps: Steps[R], ahead: Callable[[Any], object] | None
) -> R:
    from conversations.turn_sql import Ahead, Statement

    try:
        step = next(steps)
        while True:
            result: Any = None
            if isinstance(step, Ahead):
                if ahead is not None:
                    ahead(step.ctx)
                step = steps.send(result)
                continue
            if not isinstance(step, Statement):
                steps.close()
                raise NeedsThread
            await cursor.execute(step.sql, step.params)
            if step.fetch == "one":
                result = await cursor.fetchone()
            elif step.fetch == "all":
                result = await cursor.fetchall()
            step = steps.send(result)
    except StopIteration as finished:
        return finished.value


class LoopConnections:
    """The event loop's own few PostgreSQL connections, for turns' statements.

    At most `DB_CALL_THREADS` are in use at once, as on the turn threads, and a turn's
    begin and its reply's save wait their turn for one, first come first served; one
    that waits as long as the pool's timeout fails as the pool's would. The worker's Django
    pool is not drawn on: a worker holds up to that many connections more
    (docs/scaling.md). One is checked as it leaves, as the Django pool's are
    (chatproject/postgresql): a round trip only if it sat unused for `QUIET_SECONDS` or
    the server closed its side or said something. One that comes back in any state but
    idle (a cancelled statement, a broken link) is closed, not kept; with Django's pool off
    (`DB_POOL=false`) none is kept.

    Each connection keeps one cursor for every statement it runs, rather than a cursor
    made and closed for each (about 2% of a turn's CPU samples under 3,000 short turns;
    over a whole turn a tie, bench/results/loop-cursor). The cursor goes with its
    connection; a statement's rows stay on it only until the next one.

    A connection belongs to no loop between uses, but a new event loop (a test's), or a
    database setting changed (a test's database), starts afresh: those kept are closed.
    """

    def __init__(self) -> None:
        self._idle: list[tuple[AsyncCursor[Any], float]] = []  # each connection's cursor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._for: list[Any] = []
        self._free = asyncio.Semaphore(0)
        self.in_use = 0

    @contextlib.asynccontextmanager
    async def cursor(self, database: dict[str, Any]) -> AsyncIterator[AsyncCursor[Any]]:
        """The cursor of a connection to `database` (the default database's settings)."""
        loop = asyncio.get_running_loop()
        target = [database[key] for key in _TARGET]
        if loop is not self._loop or target != self._for:
            self.close_all()
            self._loop = loop
            self._for = copy.deepcopy(target)  # a copy: OPTIONS changed in place must show
            self._free = asyncio.Semaphore(_loop_connections_max())
        free = self._free
        pool = _pool_options(database)
        try:
            async with asyncio.timeout(float((pool or {}).get("timeout", 30.0))):
                await free.acquire()
        except TimeoutError:
            raise psycopg.OperationalError("no database connection free for a turn") from None
        try:
            cursor = await self._take()
            self.in_use += 1
            try:
                yield cursor
            finally:
                self.in_use -= 1
                self._give_back(cursor, kept=free is self._free and pool is not None)
        finally:
            free.release()

    async def _take(self) -> AsyncCursor[Any]:
        while self._idle:
            cursor, returned = self._idle.pop()
            if await _usable(cursor.connection, returned):
                return cursor
        return (await _connect()).cursor()

    def _give_back(self, cursor: AsyncCursor[Any], *, kept: bool) -> None:
        connection = cursor.connection
        idle = connection.info.transaction_status == TransactionStatus.IDLE
        if not kept or connection.closed or not idle:
            _close(connection)
            return
        self._idle.append((cursor, time.monotonic()))

    def close_all(self) -> None:
        """Close every idle connection (a new loop, or the end of a test session)."""
        while self._idle:
            _close(self._idle.pop()[0].connection)

    @property
    def idle(self) -> int:
        return len(self._idle)


loop_connections = LoopConnections()
metrics.TURN_CONNECTIONS_IN_USE.set_function(lambda: float(loop_connections.in_use))
metrics.TURN_CONNECTIONS_IDLE.set_function(lambda: float(loop_connections.idle))
LOOP_APPLICATION_NAME = "chat-turn"
_TARGET = ("NAME", "HOST", "PORT", "USER", "OPTIONS")


def _loop_connections_max() -> int:
    return max(settings.DB_CALL_THREADS, 1)


def _pool_options(database: dict[str, Any]) -> dict[str, Any] | None:
    """Django's pool settings; None with the pool off (DB_POOL=false), where the loop keeps
    no connection between turns either."""
    pool = database["OPTIONS"].get("pool")
    if pool is True:
        return {}
    return pool if isinstance(pool, dict) else None


async def _usable(connection: AsyncConnection[Any], returned: float) -> bool:
    recent = time.monotonic() - returned < QUIET_SECONDS
    if not connection.closed and recent and not has_input(connection.fileno()):
        return True
    try:
        await AsyncConnectionPool.check_connection(connection)
    except psycopg.Error:
        _close(connection)
        return False
    except BaseException:  # cancelled mid-check: the connection is in no known state
        _close(connection)
        raise
    return True


async def _connect() -> AsyncConnection[Any]:
    params = connections[DEFAULT_DB_ALIAS].get_connection_params()
    # Django's cursor classes are sync; these bind as they do (server-side where Django's
    # `server_side_binding` is on, else in the client, as behind PgBouncer).
    server_side = params.pop("cursor_factory").__name__ == "ServerBindingCursor"
    params["cursor_factory"] = AsyncCursor if server_side else AsyncClientCursor
    # Told apart from the pool's in pg_stat_activity (`manage.py db_report` shows the name).
    params.setdefault("application_name", LOOP_APPLICATION_NAME)
    connection = await AsyncConnection.connect(autocommit=True, **params)
    try:
        # As Django sets its own connections (`_configure_timezone`).
        zone = connections[DEFAULT_DB_ALIAS].timezone_name
        if connection.info.parameter_status("TimeZone") != zone:
            await connection.execute("SELECT set_config('TimeZone', %s, false)", [zone])
    except BaseException:
        _close(connection)
        raise
    return connection


def _close(connection: AsyncConnection[Any]) -> None:
    # The socket is closed at once, with no await: also from a loop that is gone.
    connection.pgconn.finish()
