"""How much and how often: the body size of an upload counted while it streams in (an ASGI
middleware, since Django reads the whole body before any view runs), the exact size of the
file in the view, and uploads per user per minute."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from asgiref.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest

logger = logging.getLogger(__name__)

UPLOAD_PATHS = frozenset({"/api/uploads/", "/api/uploads"})
# Room in the body for the multipart boundaries, part headers and a long file name: the
# file itself is checked exactly in the view.
MULTIPART_ALLOWANCE = 64 * 1024
RATE_WINDOW_SECONDS = 60

ASGIApp = Any


def size_text(size: int) -> str:
    """Bytes as people read them: 812 B, 2.9 KiB, 10 MiB."""
    value, unit = float(size), 0
    while value >= 1024 and unit < 3:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{size} B"
    return f"{value:.1f}".removesuffix(".0") + f" {('KiB', 'MiB', 'GiB')[unit - 1]}"


def too_large_message() -> str:
    return f"The file is too large: at most {size_text(settings.MAX_UPLOAD_BYTES)} is accepted."


def body_limit(scope: Scope) -> tuple[int, str]:
    """The most bytes a request's body may have here, and what a refusal says: an upload's
    size (plus its multipart envelope) on the upload path, else Django's own limit on the
    data it reads (DATA_UPLOAD_MAX_MEMORY_SIZE): no other request carries more."""
    if scope.get("path") in UPLOAD_PATHS:
        return settings.MAX_UPLOAD_BYTES + MULTIPART_ALLOWANCE, too_large_message()
    limit: int = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit, f"The request is too large: at most {size_text(limit)} is accepted."


class UploadSizeLimit:
    """Refuse a request body beyond its limit (body_limit: MAX_UPLOAD_BYTES for an upload)
    as it streams in, not once it is in. Every path is counted: a body Django would refuse
    anyway must not be spooled to disk first, whoever sends it.

    A declared Content-Length over the limit is answered 413 before a byte of the body is
    read. A chunked body is counted as it arrives: past the limit, the app is told the
    client went away (Django then gives up reading, answering nothing), reading stops and the
    413 goes out with `Connection: close`. Under Uvicorn this holds the whole body to the
    limit; Daphne reads every body whole before the app sees it, so there the proxy's
    client_max_body_size is what stops it (docs/attachments.md).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = body_limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, message)
            return
        seen = 0
        over = False
        started = False

        async def counted_receive() -> ASGIReceiveEvent:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: ASGISendEvent) -> None:
            nonlocal started
            if over and not started:
                return  # ours is the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if over and not started:
            await _refuse(send, message)


def _content_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))  # type: ignore[call-overload]
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: ASGISendCallable, message: str) -> None:
    body = json.dumps({"error": {"code": "too_large", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
                # The rest of the body is never read: this connection cannot carry another
                # request.
                (b"connection", b"close"),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class FileSizeLimit(FileUploadHandler):
    """The exact check, as Django's multipart parser hands over the file's bytes: past
    MAX_UPLOAD_BYTES it stops parsing and notes it (the view answers 413)."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > settings.MAX_UPLOAD_BYTES:
            self.exceeded = True
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def upload_wait(user_id: int) -> int | None:
    """Count one upload of this user; the seconds to wait when that is one too many, else
    None. Fixed one-minute windows in the cache (Redis when there is one, so every worker
    counts together): a counter needs no clean-up; at worst twice the rate across an edge."""
    now = time.time()
    window = int(now // RATE_WINDOW_SECONDS)
    key = f"uploads:{user_id}:{window}"
    try:
        cache.add(key, 0, timeout=RATE_WINDOW_SECONDS * 2)
        count = cache.incr(key)
    except Exception:
        # An outage of the cache must not stop uploads; the other limits still hold.
        logger.warning("upload rate limit: the cache is unavailable", exc_info=True)
        return None
    if count <= settings.UPLOADS_PER_MINUTE:
        return None
    return max(1, math.ceil(RATE_WINDOW_SECONDS - now % RATE_WINDOW_SECONDS))
