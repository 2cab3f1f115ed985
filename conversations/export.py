"""Writing conversations out as JSON lines or Markdown (`manage.py export_conversations`).

Unlike the API's export of one conversation, this reads the whole database in a command's own
process, a chunk of conversations at a time. As in the API, JSON holds the whole tree (every
version, each with its parent_id, and the active leaf) and Markdown the active path.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TextIO

from django.db.models import Prefetch, QuerySet

from conversations.maintenance import Progress, owner_filter
from conversations.models import Conversation, Message
from conversations.serializers import (
    conversation_export_dict,
    conversation_markdown,
    with_attachments,
)

ExportFormat = Literal["jsonl", "md"]


def _export_queryset(username: str | None) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(owner_filter(username))
        .select_related("owner", "persona")
        .prefetch_related(
            Prefetch("messages", queryset=with_attachments(Message.objects.order_by("created_at")))
        )
        .order_by("created_at", "id")
    )


def conversation_record(conversation: Conversation) -> dict[str, Any]:
    """One JSONL line: the API's export shape plus who owns it."""
    return {**conversation_export_dict(conversation), "owner": conversation.owner.get_username()}


def conversations_export(
    *,
    out: TextIO,
    export_format: ExportFormat,
    username: str | None = None,
    chunk_size: int = 200,
    progress: Progress | None = None,
) -> int:
    """Write conversations to `out` one at a time; returns how many were written.

    `iterator(chunk_size=...)` streams rows through a server-side cursor and prefetches each
    chunk's messages, so memory holds one chunk, not the whole database.
    """
    queryset = _export_queryset(username)
    total = queryset.count()
    written = 0
    for conversation in queryset.iterator(chunk_size=chunk_size):
        if export_format == "jsonl":
            out.write(json.dumps(conversation_record(conversation), ensure_ascii=False) + "\n")
        else:
            out.write(conversation_markdown(conversation))
            owner = conversation.owner.get_username()
            out.write(f"\nUser: {owner} · Conversation: {conversation.id}\n\n---\n\n")
        written += 1
        if progress is not None and (written % chunk_size == 0 or written == total):
            progress(written, total)
    return written


@contextmanager
def replaced_on_success(path: Path) -> Iterator[TextIO]:
    """A new file beside `path` that becomes `path` only when the block ends without an error.

    A refused or interrupted export (Ctrl-C included) then leaves the previous export as it
    was, never an empty file or a partial one of whole lines that looks finished. The rename
    is atomic because the new file is in the same folder. It keeps mkstemp's mode, 0600: the
    file holds other people's conversations.
    """
    if path.is_dir():
        # Caught here, not by the rename after the whole export has been written.
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        # newline="": the export's own "\n" line ends are kept on every platform.
        with open(handle, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def export_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse a JSONL export back (for restores and tests)."""
    for line in lines:
        if line.strip():
            yield json.loads(line)
