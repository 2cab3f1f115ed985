"""Liveness and readiness.

/healthz answers while the process serves. /readyz asks each dependency with a short timeout,
all at once, so a hung database or Redis turns into a quick 503 naming it instead of a probe
that hangs with it. What went wrong goes to the log, and to operators (the metrics token, or
a staff session); the public sees "ok" or "fail" per check.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chatproject.ops.metrics import has_metrics_token
from conversations.checks import provider_problems
from conversations.db import released

logger = logging.getLogger(__name__)

# Seconds each readiness check may take; a load balancer's probe usually waits longer.
CHECK_TIMEOUT = 2.0


class CheckFailed(Exception):
    """A failure whose message is ours; others are reported by their type only."""


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@released
def _database_check() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _database() -> None:
    # A thread of its own, not one that db_call runs the chat's ORM calls on: a hung check
    # must not queue the chat's database work behind it.
    await asyncio.to_thread(_database_check)


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise CheckFailed("no channel layer is configured")
    # A round trip through the layer proves Redis accepts and returns messages, not just
    # that a TCP port is open.
    channel = f"readyz.{uuid.uuid4().hex}"
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "readyz.ping":
        raise CheckFailed("the channel layer returned another message")


async def _provider() -> None:
    if problems := await asyncio.to_thread(provider_problems):
        raise CheckFailed("; ".join(f"{name}: {text}" for name, text in problems.items()))


CHECKS: dict[str, Callable[[], Awaitable[None]]] = {
    "database": _database,
    "channel_layer": _channel_layer,
    "provider": _provider,
}


async def _run(name: str, check: Callable[[], Awaitable[None]], timeout: float) -> str:
    """Either "ok" or what went wrong: for the log and operators, never for the public."""
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        logger.warning("readyz: %s gave no answer within %gs", name, timeout)
        return f"error: no answer within {timeout:g}s"
    except CheckFailed as exc:
        logger.warning("readyz: %s: %s", name, exc)
        return f"error: {exc}"
    except Exception as exc:
        logger.warning("readyz: %s failed", name, exc_info=True)
        return f"error: {type(exc).__name__}"
    return "ok"


async def _may_see_details(request: HttpRequest) -> bool:
    """Operators: the metrics token's holder, or a staff user's session."""
    if has_metrics_token(request):
        return True
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False  # a probe: no session to look up, so no database call
    try:
        user = await asyncio.wait_for(request.auser(), CHECK_TIMEOUT)
    except Exception:
        # The database may be the very thing that is down.
        return False
    return bool(user.is_active and user.is_staff)


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    timeout = float(getattr(settings, "READYZ_CHECK_TIMEOUT", CHECK_TIMEOUT))
    results = await asyncio.gather(*(_run(name, check, timeout) for name, check in CHECKS.items()))
    details = dict(zip(CHECKS, results, strict=True))
    ok = all(value == "ok" for value in details.values())
    # The public gets a word per check: a setting's name or a host is a hint to an attacker.
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "checks": {name: "ok" if value == "ok" else "fail" for name, value in details.items()},
    }
    if not ok and await _may_see_details(request):
        body["details"] = {name: value for name, value in details.items() if value != "ok"}
    return JsonResponse(body, status=200 if ok else 503)
