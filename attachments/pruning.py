"""Files nobody uses any more: uploads no message has, and stored objects no upload names
(`manage.py prune_conversations` removes them, `manage.py db_report` counts them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from attachments.models import Attachment, Upload
from attachments.services import object_delete_unnamed, objects_release
from conversations.maintenance import Progress, owner_filter
from conversations.models import Conversation

# Every stored name starts here (services.storage_name); nothing else in the storage is ours.
UPLOADS_ROOT = "uploads"
# An upload is sent in a chat.send moments after it is stored, and an object is named by its
# row moments after it is written: a day leaves room for a composer left open overnight.
DEFAULT_GRACE = timedelta(hours=24)


@dataclass(frozen=True)
class UploadsPruneResult:
    uploads: int
    upload_bytes: int
    # Stored objects no upload row names; None when they were not looked for (--user).
    objects: int | None
    object_bytes: int
    dry_run: bool


@dataclass(frozen=True)
class UploadsSummary:
    uploads: int
    upload_bytes: int
    unused: int
    unused_bytes: int


def unused_uploads(
    *,
    grace: timedelta,
    username: str | None = None,
    going: QuerySet[Conversation] | None = None,
) -> QuerySet[Upload]:
    """Uploads older than `grace` that no message has, or (`going`) none outside these
    conversations, which are about to be deleted."""
    used = Attachment.objects.filter(upload=OuterRef("pk"))
    if going is not None:
        used = used.exclude(message__conversation__in=going)
    return Upload.objects.filter(
        owner_filter(username), created_at__lt=timezone.now() - grace
    ).exclude(Exists(used))


def uploads_prune(
    *,
    grace: timedelta = DEFAULT_GRACE,
    username: str | None = None,
    dry_run: bool = False,
    going: QuerySet[Conversation] | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> UploadsPruneResult:
    """Delete unused uploads, then (for all users only) the objects no row names.

    A dry run counts what a real run would delete, those of the `going` conversations too."""
    unused = unused_uploads(grace=grace, username=username, going=going if dry_run else None)
    totals = unused.aggregate(count=Count("pk"), size=Sum("size"))
    if dry_run:
        orphans = None if username else list(orphan_objects(grace=grace))
        return UploadsPruneResult(
            uploads=totals["count"],
            upload_bytes=totals["size"] or 0,
            objects=None if orphans is None else len(orphans),
            object_bytes=sum(size for _, size in orphans or []),
            dry_run=True,
        )
    deleted = deleted_bytes = 0
    while True:
        with transaction.atomic():
            # Locked as upload_delete locks them: a send attaching one meanwhile commits
            # first (and the query below, a new snapshot, leaves it out) or waits and finds
            # it gone, answering not_found.
            ids = list(
                unused.order_by("pk")
                .select_for_update(of=("self",))
                .values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                break
            going_now = unused_uploads(grace=grace, username=username).filter(pk__in=ids)
            rows = list(going_now.values_list("file", "size"))
            going_now.delete()
            # After the commit, and only where no other row (a fork's copy) names the object.
            objects_release(name for name, _ in rows)
        deleted += len(rows)
        deleted_bytes += sum(size for _, size in rows)
        if progress is not None:
            progress(deleted, totals["count"])
    objects = object_bytes = 0
    if username is None:
        for name, size in orphan_objects(grace=grace):
            if object_delete_unnamed(name):
                objects += 1
                object_bytes += size
    return UploadsPruneResult(
        uploads=deleted,
        upload_bytes=deleted_bytes,
        objects=None if username else objects,
        object_bytes=object_bytes,
        dry_run=False,
    )


def stored_names(folder: str = UPLOADS_ROOT) -> Iterator[str]:
    """Every object under `folder`, through the storage API (a folder walk, or an S3 listing
    by prefix)."""
    try:
        folders, names = default_storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        yield f"{folder}/{name}"
    for sub in folders:
        yield from stored_names(f"{folder}/{sub}")


def orphan_objects(*, grace: timedelta, batch_size: int = 500) -> Iterator[tuple[str, int]]:
    """(name, size) of each stored object that no upload row names, written before `grace`
    ago: one a crash left between storing it and inserting its row."""
    cutoff = timezone.now() - grace
    names = stored_names()
    while batch := [name for _, name in zip(range(batch_size), names, strict=False)]:
        named = set(Upload.objects.filter(file__in=batch).values_list("file", flat=True))
        for name in batch:
            if name not in named and default_storage.get_modified_time(name) < cutoff:
                yield name, default_storage.size(name)


def uploads_summary(*, grace: timedelta = DEFAULT_GRACE) -> UploadsSummary:
    """Two sums over the table; the storage is not listed (a bucket may hold millions)."""
    unused = Q(created_at__lt=timezone.now() - grace) & ~Exists(
        Attachment.objects.filter(upload=OuterRef("pk"))
    )
    totals = Upload.objects.aggregate(
        uploads=Count("pk"),
        upload_bytes=Sum("size"),
        unused=Count("pk", filter=unused),
        unused_bytes=Sum("size", filter=unused),
    )
    return UploadsSummary(
        uploads=totals["uploads"],
        upload_bytes=totals["upload_bytes"] or 0,
        unused=totals["unused"],
        unused_bytes=totals["unused_bytes"] or 0,
    )
