"""Session auth for sockets, with the connection given back inside the lookup."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddleware
from channels.security.websocket import WebsocketDenier
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.db import DatabaseError
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from conversations import services
from conversations.db import db_call, turn_call

logger = logging.getLogger(__name__)


async def _lookup_user(scope: dict[str, Any]) -> Any:
    """Channels' `get_user`: on PostgreSQL its everyday case is two statements on the event
    loop (`services.socket_user_steps`), the rest Channels' own code on a thread. A socket
    with no session cookie takes no connection of the loop's (which turns wait for): it is
    refused as before, also while the database is down."""
    session = scope["session"]  # there: AuthMiddleware.populate_scope checked
    if not services.socket_user_on_loop(session):
        return await db_call(services.socket_user)(session=session)
    return await turn_call(
        services.socket_user_steps, services.socket_user, atomic=False, session=session
    )


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


def origin_allowed(scope: dict[str, Any]) -> bool:
    """The socket's Origin is the site's own (scheme, host and port all equal), or one of
    CSRF_TRUSTED_ORIGINS: the rule Django's CSRF check applies to forms."""
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    origin = headers.get(b"origin", b"").decode("latin-1").strip().lower()
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if not origin or not host or origin == "null":
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    secure = scope.get("scheme") == "wss"
    if settings.SECURE_PROXY_SSL_HEADER:
        header, value = settings.SECURE_PROXY_SSL_HEADER
        forwarded = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        secure = secure or headers.get(forwarded, b"").decode("latin-1").strip() == value
    if origin == f"{'https' if secure else 'http'}://{host}":
        return True
    return _trusted(origin)


def _trusted(origin: str) -> bool:
    parsed = urlsplit(origin)
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        trusted = trusted.strip().lower()
        if origin == trusted:
            return True
        if "*" in trusted:  # "https://*.example.com", as Django allows
            scheme, _, pattern = trusted.partition("://")
            if parsed.scheme == scheme and is_same_domain(parsed.netloc, pattern.replace("*", "")):
                return True
    return False


class SameOriginValidator:
    """Refuses the handshake (403) of a socket opened from any other origin."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)
