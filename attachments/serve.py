"""How a stored file leaves the server: always a download, never something a browser runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import IO, Any

from asgiref.sync import sync_to_async
from django.http import FileResponse

from attachments.models import Attachment, Upload

# Nothing in a served file may load, run or frame anything, even if a browser renders it.
FILE_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"
CHUNK_BYTES = 64 * 1024


def file_response(upload: Upload) -> FileResponse:
    """The stored bytes under the type judged at upload, as an attachment download. Images
    still show in the page's <img> (which ignores Content-Disposition); opened directly,
    nothing is rendered as HTML, and `nosniff` stops a browser guessing otherwise."""
    stored = upload.file.open("rb")
    content_type = upload.content_type
    if upload.kind == Upload.Kind.TEXT:
        # Verified UTF-8 at upload: say so, or a browser may guess another encoding.
        content_type += "; charset=utf-8"
    response = FileResponse(
        stored, as_attachment=True, filename=upload.name, content_type=content_type
    )
    # Read a chunk at a time on a thread: under ASGI, Django would read a file's plain
    # iterator whole into memory first (and warn). The file is still closed with the
    # response; the size is the one judged at upload.
    response.streaming_content = _chunks(stored)
    response["Content-Length"] = str(upload.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = FILE_CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    response["Cache-Control"] = "private, max-age=3600"
    return response


async def _chunks(stored: IO[bytes]) -> AsyncIterator[bytes]:
    read = sync_to_async(stored.read, thread_sensitive=False)
    while chunk := await read(CHUNK_BYTES):
        yield chunk


def owner_url(upload_id: object) -> str:
    return f"/api/uploads/{upload_id}/"


def attachment_dict(upload: Upload, url: str) -> dict[str, Any]:
    """An attachment as PROTOCOL.md lists it on a message, plus the pixel size of images so
    the page can reserve their space before they load (additive)."""
    return {
        "id": str(upload.id),
        "name": upload.name,
        "content_type": upload.content_type,
        "size": upload.size,
        "url": url,
        "kind": upload.kind,
        "width": upload.width,
        "height": upload.height,
    }


def attachments_by_message(message_ids: Iterable[object]) -> dict[Any, list[Upload]]:
    """The uploads on each of these messages, in the order attached: one query."""
    found: dict[Any, list[Upload]] = {}
    rows = Attachment.objects.filter(message_id__in=list(message_ids)).select_related("upload")
    for row in rows.order_by("message_id", "position"):
        found.setdefault(row.message_id, []).append(row.upload)
    return found
