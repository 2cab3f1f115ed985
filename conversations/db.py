"""The one way async chat code reaches the database.

`db_call(func)` runs a sync ORM function on a worker thread and gives its connection back to
the pool *inside* that call, before the await returns. Relying on the connection being closed
after the call is not enough: a connection left open there stays checked out of the pool until
the same thread happens to run again, and that is exactly the leak this project exists to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
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


def db_call(func: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    return database_sync_to_async(released(func))
