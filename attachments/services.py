"""Writes of uploads: the stored object and its row, both or neither."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from attachments.judge import Judged, UploadRefused
from attachments.limits import size_text
from attachments.models import Attachment, Upload

logger = logging.getLogger(__name__)


class UploadInUse(Exception):
    """The upload is on a message; it goes only with the message."""


def storage_name(upload_id: uuid.UUID, extension: str) -> str:
    # Never derived from the sender's name: no path, no clash, nothing for them to choose.
    return f"uploads/{timezone.now():%Y/%m}/{upload_id}.{extension}"


def upload_create(*, owner_id: int, name: str, judged: Judged, quota_bytes: int) -> Upload:
    """Store the file, then insert its row; if the row fails, the object goes again.

    The object is written before the transaction opens, so no connection is held while
    bytes travel to the storage (an S3 bucket may be slow)."""
    upload_id = uuid.uuid4()
    try:
        stored = default_storage.save(
            storage_name(upload_id, judged.extension), ContentFile(judged.data)
        )
    except Exception:
        # A full disk, a bucket that is away: nothing was written, so there is no row either.
        logger.exception("upload could not be stored")
        raise UploadRefused(
            "The file could not be stored just now; try again later.",
            status=503,
            code="unavailable",
        ) from None
    try:
        return upload_insert(
            upload_id=upload_id,
            owner_id=owner_id,
            name=name,
            judged=judged,
            stored=stored,
            quota_bytes=quota_bytes,
        )
    except BaseException:
        object_delete_unnamed(stored)
        raise


@transaction.atomic
def upload_insert(
    *,
    upload_id: uuid.UUID,
    owner_id: int,
    name: str,
    judged: Judged,
    stored: str,
    quota_bytes: int,
) -> Upload:
    if quota_bytes > 0:
        # The owner's row is the lock: two uploads at once cannot both fit the last space.
        get_user_model().objects.select_for_update().filter(pk=owner_id).first()
        used = Upload.objects.filter(owner_id=owner_id).aggregate(total=Sum("size"))["total"]
        if (used or 0) + len(judged.data) > quota_bytes:
            raise UploadRefused(
                f"Your files take {size_text(used or 0)} of the {size_text(quota_bytes)} "
                "you may keep; delete files or conversations with files first.",
                status=413,
                code="quota_exceeded",
            )
    return Upload.objects.create(
        id=upload_id,
        owner_id=owner_id,
        name=name,
        kind=judged.kind,
        content_type=judged.content_type,
        size=len(judged.data),
        file=stored,
        text=judged.text,
        width=judged.width,
        height=judged.height,
    )


@transaction.atomic
def upload_delete(*, owner_id: int, upload_id: uuid.UUID) -> bool:
    """Delete one's own upload that no message uses: False when there is no such upload,
    UploadInUse when a message has it. The object goes after the commit, if no other row
    (a fork's copy) names it."""
    # Locked first: a send attaching it meanwhile waits (turn_begin locks the uploads it
    # attaches), then finds it gone.
    upload = Upload.objects.select_for_update().filter(id=upload_id, owner_id=owner_id).first()
    if upload is None:
        return False
    if Attachment.objects.filter(upload=upload).exists():
        raise UploadInUse()
    name = upload.file.name
    upload.delete()
    transaction.on_commit(lambda: object_delete_unnamed(name))
    return True


def objects_release(names: Iterable[str]) -> None:
    """After rows were deleted (admin, pruning): their objects go once the commit is done."""
    for name in set(names):
        transaction.on_commit(functools.partial(object_delete_unnamed, name))


def object_delete_unnamed(name: str) -> bool:
    """Delete a stored object unless an upload row names it. A storage error is logged,
    not raised: the row is gone already, and prune_conversations sweeps what is left."""
    if not name or Upload.objects.filter(file=name).exists():
        return False
    try:
        default_storage.delete(name)
    except Exception:
        logger.warning("upload object %s could not be deleted", name, exc_info=True)
        return False
    return True
