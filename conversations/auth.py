"""Session auth for sockets, with the connection given back inside the lookup."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.auth import AuthMiddleware, get_user
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.db import DatabaseError

from conversations.db import db_call

logger = logging.getLogger(__name__)
_lookup_user = db_call(get_user.func)


class ReleasingAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        # A handshake during a database restart waits a moment rather than failing at once:
        # pages reconnect all together after a blip, and the pool drops dead connections.
        for delay in (0.25, 0.5, 1.0, 2.0):
            try:
                scope["user"]._wrapped = await _lookup_user(scope)
                return
            except DatabaseError:
                logger.warning("session lookup failed; retrying in %.2fs", delay)
                await asyncio.sleep(delay)
        scope["user"]._wrapped = await _lookup_user(scope)


def AuthMiddlewareStack(inner: Any) -> Any:
    return CookieMiddleware(SessionMiddleware(ReleasingAuthMiddleware(inner)))
