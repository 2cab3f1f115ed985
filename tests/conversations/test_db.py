"""db_call gives the connection back inside the call, whatever task or context calls it."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from django.db import connection

from conversations.db import db_call
from tests.conftest import count_users, pool_checked_out, release_shared_thread

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_db_call_releases_from_tasks_and_fresh_contexts(alice, released_main):
    assert connection.pool is not None
    await release_shared_thread()

    await db_call(count_users)()
    await asyncio.gather(*(db_call(count_users)() for _ in range(5)))
    await contextvars.Context().run(asyncio.create_task, db_call(count_users)())

    assert await asyncio.to_thread(pool_checked_out) == 0
