"""Session auth for sockets, with the connection given back inside the lookup."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddleware, get_user
from channels.sessions import CookieMiddleware, SessionMiddleware

from conversations.db import db_call

_lookup_user = db_call(get_user.func)


class ReleasingAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        scope["user"]._wrapped = await _lookup_user(scope)


def AuthMiddlewareStack(inner: Any) -> Any:
    return CookieMiddleware(SessionMiddleware(ReleasingAuthMiddleware(inner)))
