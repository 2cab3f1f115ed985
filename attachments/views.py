"""POST /api/uploads/, and GET / HEAD / DELETE /api/uploads/<id>/ for the owner only."""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from attachments import services
from attachments.judge import Judged, UploadRefused, clean_name, download_name, judge
from attachments.limits import FileSizeLimit, too_large_message, upload_wait
from attachments.models import Upload
from attachments.serve import attachment_dict, file_response, owner_url
from conversations.api import ApiError, api_view, error_response, request_user
from conversations.db import io_call

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def counts_file_bytes(view: AsyncView) -> AsyncView:
    """Put the exact size check first among the upload handlers. It must come before
    api_view, whose CSRF check is the first to read the body."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        request.upload_handlers = [FileSizeLimit(request), *request.upload_handlers]
        return await view(request, *args, **kwargs)

    return wrapper


def _received(request: HttpRequest) -> tuple[str, bytes]:
    """The one file sent as `file`: its name as sent and its bytes (at most
    MAX_UPLOAD_BYTES, which the handler above has already made sure of)."""
    files = request.FILES.getlist("file")
    limit = next(h for h in request.upload_handlers if isinstance(h, FileSizeLimit))
    if limit.exceeded:
        raise ApiError(413, "too_large", too_large_message())
    if len(files) != 1:
        raise ApiError(400, "invalid", "Send one file, as the multipart field `file`.")
    uploaded = files[0]
    if uploaded.size is not None and uploaded.size > settings.MAX_UPLOAD_BYTES:
        raise ApiError(413, "too_large", too_large_message())
    with uploaded.open("rb") as stream:
        data = stream.read(settings.MAX_UPLOAD_BYTES + 1)
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise ApiError(413, "too_large", too_large_message())
    return uploaded.name or "", data


def _judged(name: str, data: bytes) -> tuple[str, Judged]:
    cleaned = clean_name(name)
    judged = judge(data, cleaned)
    return download_name(cleaned, judged), judged


# Reading the file runs on a thread of the default pool, never the event loop's nor the
# database's.
_read = sync_to_async(_received, thread_sensitive=False)
_wait = sync_to_async(upload_wait, thread_sensitive=False)
_decoding: ThreadPoolExecutor | None = None
QUEUE_SECONDS_MIN = 5.0


def _decode_pool() -> ThreadPoolExecutor:
    global _decoding
    if _decoding is None:
        _decoding = ThreadPoolExecutor(settings.UPLOAD_DECODERS, thread_name_prefix="upload-decode")
    return _decoding


async def _judge(name: str, data: bytes) -> tuple[str, Judged]:
    """Judge the file on the decoders' own threads (UPLOAD_DECODERS of them, each driving a
    child process for up to UPLOAD_DECODE_SECONDS). Uploads waiting for one wait here, on
    the event loop, not on a thread: a flood of uploads must not take the threads that
    readiness checks, downloads and turns need."""
    started = threading.Event()

    def judged() -> tuple[str, Judged]:
        started.set()
        return _judged(name, data)

    pending = asyncio.get_running_loop().run_in_executor(_decode_pool(), judged)
    try:
        # Long enough to wait out two decodes ahead of this one (and a thread's start).
        queued = max(settings.UPLOAD_DECODE_SECONDS * 2, QUEUE_SECONDS_MIN)
        return await asyncio.wait_for(asyncio.shield(pending), queued)
    except TimeoutError:
        if started.is_set():
            return await pending  # decoding: it ends by its own limit
        pending.cancel()  # still queued: never decoded
        raise UploadRefused(
            "Too many files are being read right now; try again in a moment.",
            status=503,
            code="unavailable",
        ) from None


@counts_file_bytes
@api_view("POST")
async def uploads(request: HttpRequest) -> HttpResponse:
    user_id = request_user(request).pk
    # Every attempt counts, refused ones too: decoding is the costly part.
    wait = await _wait(user_id)
    if wait is not None:
        response = error_response(
            429,
            "rate_limited",
            f"You can upload {settings.UPLOADS_PER_MINUTE} file(s) a minute; "
            f"try again in {wait} s.",
        )
        response["Retry-After"] = str(wait)
        return response
    name, data = await _read(request)
    try:
        name, judged = await _judge(name, data)
        upload = await io_call(services.upload_create)(
            owner_id=user_id,
            name=name,
            judged=judged,
            quota_bytes=settings.UPLOAD_QUOTA_BYTES,
        )
    except UploadRefused as refused:
        return error_response(refused.status, refused.code, refused.message)
    return JsonResponse(attachment_dict(upload, owner_url(upload.id)), status=201)


def get_upload_for_user(request: HttpRequest, upload_id: uuid.UUID) -> Upload:
    # Scoped by owner: another user's upload is a plain 404, like an unknown id.
    found = Upload.objects.filter(id=upload_id, owner=request_user(request)).first()
    if found is None:
        raise ApiError(404, "not_found", "No such file.")
    return found


@api_view("GET", "DELETE")
def upload(request: HttpRequest, upload_id: uuid.UUID) -> HttpResponseBase:
    if request.method == "DELETE":
        try:
            deleted = services.upload_delete(owner_id=request_user(request).pk, upload_id=upload_id)
        except services.UploadInUse:
            raise ApiError(
                409, "conflict", "This file is on a message; it goes with its conversation."
            ) from None
        if not deleted:
            raise ApiError(404, "not_found", "No such file.")
        return HttpResponse(status=204)
    return file_response(get_upload_for_user(request, upload_id))
