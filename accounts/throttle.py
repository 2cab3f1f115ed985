"""Throttles for the account pages: failed logins (django-axes) and signups (the cache).

Both count by the same client address, `client_ip()`, so a proxy is configured in one place.
Signups use a small counter in Django's cache rather than django-ratelimit: it is one
limit on one view, and django-ratelimit would bring its own client address setting
(RATELIMIT_IP_META_KEY) that could disagree with the one axes uses.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)

TOO_MANY = 429
SIGNUP_WINDOW_SECONDS = 3600


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: the peer's, unless TRUSTED_PROXY_COUNT proxies stand in front.

    Each trusted proxy appends the address it received the request from to X-Forwarded-For,
    so with N of them the client is the N-th entry from the right; anything to its left came
    from the client itself and could be anything.
    """
    peer: str | None = request.META.get("REMOTE_ADDR")
    count: int = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    return hops[-count] if len(hops) >= count else peer


def minutes_left(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' lockout answer: the login page, 429, saying how long to wait."""
    cool_off = get_cool_off(request)
    minutes = minutes_left(cool_off.total_seconds()) if cool_off else None
    context = {
        "form": AuthenticationForm(request),
        "locked_out_minutes": minutes,
        "allow_signup": settings.ALLOW_SIGNUP,
        "next": request.POST.get("next", ""),
    }
    response = render(request, "registration/login.html", context, status=TOO_MANY)
    if minutes:
        response["Retry-After"] = str(minutes * 60)
    return response


def signup_wait(request: HttpRequest, *, take: bool = False) -> int | None:
    """Minutes until this address may sign up again, or None while it is under the limit.

    `take=True` counts one more account first (atomic in Redis and in the local cache), so
    concurrent signups cannot all pass one check. Fixed one-hour windows: a counter needs no
    clean-up and works on any cache; an address may at worst sign up twice the limit across
    a window's edge.
    """
    now = time.time()
    key = f"signups:{client_ip(request) or 'unknown'}:{int(now // SIGNUP_WINDOW_SECONDS)}"
    limit: int = settings.SIGNUPS_PER_HOUR
    try:
        if take:
            cache.add(key, 0, timeout=SIGNUP_WINDOW_SECONDS)
            over = cache.incr(key) > limit
        else:
            over = cache.get(key, 0) >= limit
    except Exception:
        # The cache is Redis when REDIS_URL is set: an outage must not close signups.
        logger.warning("signup throttle: the cache is unavailable", exc_info=True)
        return None
    if not over:
        return None
    return minutes_left(SIGNUP_WINDOW_SECONDS - now % SIGNUP_WINDOW_SECONDS)
