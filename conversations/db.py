"""The one way async chat code reaches the database.

`db_call(func)` runs a sync ORM function on a worker thread and gives its connection back to
the pool *inside* that call, before the await returns. Relying on the connection being closed
after the call is not enough: a connection left open there stays checked out of the pool until
the same thread happens to run again, and that is exactly the leak this project exists to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections

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
