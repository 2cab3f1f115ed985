"""What a turn's attachments give the model: image bytes read from storage, never in a
transaction (DESIGN.md: no connection is held while files are read or tokens stream)."""

from __future__ import annotations

import logging
import uuid

from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage

from conversations.context import AttachmentInfo

logger = logging.getLogger(__name__)


def images_read(images: list[AttachmentInfo]) -> dict[uuid.UUID, bytes]:
    """The stored bytes of each image. One that storage cannot give back is left out (the
    prompt names it instead): a reply goes on without a picture rather than not at all."""
    found = {}
    for image in images:
        try:
            with default_storage.open(image.file, "rb") as stored:
                found[image.id] = stored.read()
        except OSError as exc:
            logger.warning("attachment %s could not be read from storage: %s", image.id, exc)
    return found


async def images_for_prompt(images: list[AttachmentInfo]) -> dict[uuid.UUID, bytes]:
    if not images:
        return {}
    # A thread of the default pool, not the database's: reading files needs no connection.
    return await sync_to_async(images_read, thread_sensitive=False)(images)
