"""How a stored file leaves the server: always a download, never something a browser runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.http import FileResponse

from attachments.models import Attachment, Upload

# Nothing in a served file may load, run or frame anything, even if a browser renders it.
FILE_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"


def file_response(upload: Upload) -> FileResponse:
    """The stored bytes under the type judged at upload, as an attachment download. Images
    still show in the page's <img> (which ignores Content-Disposition); opened directly,
    nothing is rendered as HTML, and `nosniff` stops a browser guessing otherwise."""
    response = FileResponse(
        upload.file.open("rb"),
        as_attachment=True,
        filename=upload.name,
        content_type=upload.content_type,
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = FILE_CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    response["Cache-Control"] = "private, max-age=3600"
    return response


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
