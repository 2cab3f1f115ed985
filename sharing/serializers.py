"""A share as readers get it: the snapshot's words, the persona's face, file links inside
the share. Nothing of the owner, and no ids of the owner's tree."""

from __future__ import annotations

from typing import Any

from attachments.serve import attachment_dict
from sharing.models import Share
from sharing.services import share_uploads


def page_path(token: str) -> str:
    return f"/s/{token}/"


def file_path(token: str, upload_id: object) -> str:
    return f"/api/shares/{token}/files/{upload_id}/"


def share_link_dict(share: Share, url: str) -> dict[str, Any]:
    """What the owner gets back: the link to copy and when its snapshot was taken."""
    return {"token": share.token, "url": url, "created_at": share.created_at.isoformat()}


def share_dict(share: Share) -> dict[str, Any]:
    snapshot = share.snapshot
    persona = snapshot.get("persona") or {}
    uploads = share_uploads(share)
    return {
        "title": snapshot.get("title", ""),
        # PROTOCOL.md's "persona" is the name to show (a slug would say nothing to a reader);
        # the avatar and description are additive.
        "persona": persona.get("name", ""),
        "persona_avatar": persona.get("avatar", ""),
        "persona_description": persona.get("description", ""),
        "created_at": share.created_at.isoformat(),
        "messages": [
            {
                "role": message["role"],
                "content": message["content"],
                "status": message.get("status", "complete"),
                "created_at": message["created_at"],
                "attachments": [
                    attachment_dict(uploads[upload_id], file_path(share.token, upload_id))
                    for upload_id in message.get("attachments", [])
                    if upload_id in uploads
                ],
            }
            for message in snapshot.get("messages", [])
        ],
    }
