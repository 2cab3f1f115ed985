"""The real application with knobs turned, to measure a change before making it.

Nothing outside bench/ is edited: the patches below are applied in this process only, before
the consumer modules bind what they patch. They are measurement tools, not the fix itself.

`BENCH_DB_THREADS=N` (N > 0)
    `conversations.db.db_call` runs the turn's database calls with `thread_sensitive=False`
    on a pool of N threads, instead of Channels' default (every `database_sync_to_async`
    call of the process queued on one shared thread). The turn functions are
    self-contained (one `released()` call each), so this is safe for them.
`BENCH_LEAN_STREAM=1`
    `Generation._stream` coalesces with one timer per window instead of one Task plus one
    `asyncio.wait` per token: a single producer task drains the provider into the buffer,
    and the stream flushes the buffer when the first token arrives and then at the end of
    every window (so a model that pauses still has its text out within one window). Token
    and frame counters are bumped once per frame.
`BENCH_LAYER_CLEAN_S=S`
    Channels' `InMemoryChannelLayer._clean_expired` (a scan of every channel and group
    member, run on each `receive()` and `group_send()`) runs at most once every S seconds.

    BENCH_DB_THREADS=10 daphne -p 8103 bench.variant_app:application
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

import conversations.db as db

THREADS = int(os.environ.get("BENCH_DB_THREADS", "0") or 0)
LEAN_STREAM = os.environ.get("BENCH_LEAN_STREAM", "") == "1"
LAYER_CLEAN_S = float(os.environ.get("BENCH_LAYER_CLEAN_S", "0") or 0)

if THREADS > 0:
    from channels.db import database_sync_to_async

    _executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="db-call")

    def db_call(func: Any) -> Any:
        return database_sync_to_async(db.released(func), thread_sensitive=False, executor=_executor)

    db.db_call = db_call

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

if LEAN_STREAM:
    from django.conf import settings

    from conversations import metrics
    from conversations.llm.base import Usage
    from conversations.streaming import Generation

    async def _lean_stream(self: Any) -> None:
        window = settings.STREAM_COALESCE_MS / 1000
        buffer: list[str] = []
        events = self.provider.stream(self.request)
        first = asyncio.Event()

        async def pull() -> None:
            async for event in events:
                if isinstance(event, Usage):
                    self.usage = event
                elif isinstance(event, str) and event:
                    buffer.append(event)
                    if not first.is_set():
                        first.set()

        async def flush() -> None:
            text, count = "".join(buffer), len(buffer)
            buffer.clear()
            metrics.TOKENS.inc(count)
            await self._emit(text)

        # One task per generation, not one per token.
        producer = asyncio.ensure_future(pull())
        try:
            waiter = asyncio.ensure_future(first.wait())
            try:
                await asyncio.wait({producer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            while True:
                if buffer:
                    await flush()
                if producer.done():
                    break
                # One timer per window, however many tokens arrive in it.
                await asyncio.wait({producer}, timeout=window)
            producer.result()  # the provider's error, if it failed
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
            if buffer:
                # Text the model already produced is kept, even when stopped or failing.
                self.frames.append("".join(buffer))
                metrics.FRAMES.inc()
                await self._deliver_tail()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()

    Generation._stream = _lean_stream  # type: ignore[method-assign]

__all__ = ["application"]
