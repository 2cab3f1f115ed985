"""The real application with the in-memory layer's expiry scan throttled.

Applied in this process only, before the consumer modules bind what they patch: a
measurement tool for a change not made in the app.

`BENCH_LAYER_CLEAN_S=S`
    Channels' `InMemoryChannelLayer._clean_expired` (a scan of every channel and group
    member, run on each `receive()` and `group_send()`) runs at most once every S seconds.

The two other changes first measured here (the turn's database calls on a thread pool, and
one coalescing timer per window) are now the app's own code: `DB_CALL_THREADS` in
settings and `Generation._stream`.

    BENCH_LAYER_CLEAN_S=1 daphne -p 8103 bench.variant_app:application
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")


LAYER_CLEAN_S = float(os.environ.get("BENCH_LAYER_CLEAN_S", "0") or 0)

if LAYER_CLEAN_S > 0:
    from channels.layers import InMemoryChannelLayer

    _clean = InMemoryChannelLayer._clean_expired

    def _throttled_clean(self: Any) -> None:
        now = time.monotonic()
        if now - getattr(self, "_bench_cleaned_at", 0.0) >= LAYER_CLEAN_S:
            self._bench_cleaned_at = now
            _clean(self)

    InMemoryChannelLayer._clean_expired = _throttled_clean

from chatproject.asgi import application  # noqa: E402

__all__ = ["application"]
