"""Forks per user per minute: each fork copies a whole conversation, so a script must not be
able to copy one thousands of times a minute."""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

FORK_WINDOW_SECONDS = 60
FORKS_PER_MINUTE = 20


def fork_wait(user_id: int) -> int | None:
    """Counts one more fork; seconds until the user may fork again, or None while under the
    limit (SHARE_FORKS_PER_MINUTE, default 20).

    Fixed windows in the cache (Redis when there is one, so every worker counts together),
    as the signup throttle does: no clean-up, and the increment is atomic.
    """
    limit = int(getattr(settings, "SHARE_FORKS_PER_MINUTE", FORKS_PER_MINUTE))
    now = time.time()
    key = f"share-forks:{user_id}:{int(now // FORK_WINDOW_SECONDS)}"
    try:
        cache.add(key, 0, timeout=FORK_WINDOW_SECONDS)
        over = cache.incr(key) > limit
    except Exception:
        # A cache outage must not stop people continuing chats.
        logger.warning("fork throttle: the cache is unavailable", exc_info=True)
        return None
    if not over:
        return None
    return max(1, math.ceil(FORK_WINDOW_SECONDS - now % FORK_WINDOW_SECONDS))
