"""prune_conversations removes files nobody uses any more, db_report counts them: real files
uploaded through the view into the test's folder, aged by updating their rows and mtimes."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from attachments.models import Attachment, Upload
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.attachments import files
from tests.attachments.conftest import logged_in, post_file, stored_files

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous"),
]


def run(*args: str) -> tuple[list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip().splitlines(), err.getvalue()


def upload(owner: Any, name: str, data: bytes, *, hours_old: float = 0) -> Upload:
    answer = post_file(logged_in(owner), name, data)
    assert answer.status_code == 201, answer.content
    Upload.objects.filter(id=answer.json()["id"]).update(
        created_at=timezone.now() - timedelta(hours=hours_old)
    )
    return Upload.objects.get(id=answer.json()["id"])


def sent_with(made: Upload, persona: Any, *, days_old: float = 0) -> Conversation:
    chat = Conversation.objects.create(owner=made.owner, persona=persona, title="with a file")
    message = message_append(conversation=chat, role=Message.Role.USER, content="see this")
    Attachment.objects.create(message=message, upload=made, position=0)
    Conversation.objects.filter(pk=chat.pk).update(
        updated_at=timezone.now() - timedelta(days=days_old)
    )
    return chat


def orphan(media: Path, name: str, data: bytes, *, hours_old: float) -> Path:
    """An object as a crash between storing it and inserting its row leaves it."""
    path = media / "uploads" / "2024" / "01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    when = time.time() - hours_old * 3600
    os.utime(path, (when, when))
    return path


def test_unused_uploads_and_orphans_past_the_grace_go_and_the_rest_stays(
    alice: Any, bob: Any, persona: Any, media: Path
) -> None:
    forgotten = upload(alice, "forgotten.txt", b"a" * 1000, hours_old=30)
    sent = upload(alice, "sent.png", files.png(), hours_old=30)
    sent_with(sent, persona)
    composing = upload(alice, "composing.txt", b"being attached", hours_old=1)
    bobs = upload(bob, "bob.txt", b"b" * 2000, hours_old=48)
    old_orphan = orphan(media, "crashed.png", b"x" * 3000, hours_old=25)
    new_orphan = orphan(media, "storing.png", b"y" * 10, hours_old=0.1)
    before = stored_files(media)

    dry, _ = run("prune_conversations", "--older-than", "90d", "--dry-run")

    assert dry[1] == (
        "prune_conversations: dry run, would delete 2 unused upload(s) (2.9 KiB) and "
        "1 stored file(s) no upload names (2.9 KiB), older than 24h"
    )
    assert stored_files(media) == before
    assert Upload.objects.count() == 4

    out, err = run("prune_conversations", "--older-than", "90d")

    assert out[1] == (
        "prune_conversations: deleted 2 unused upload(s) (2.9 KiB) and "
        "1 stored file(s) no upload names (2.9 KiB), older than 24h"
    )
    assert set(Upload.objects.values_list("id", flat=True)) == {sent.id, composing.id}
    left = stored_files(media)
    assert media / forgotten.file.name not in left
    assert media / bobs.file.name not in left
    assert not old_orphan.exists()
    assert left == sorted([media / sent.file.name, media / composing.file.name, new_orphan])
    assert err.splitlines()[-1].endswith("2/2 unused uploads deleted")
    # What stays still downloads.
    assert logged_in(alice).get(f"/api/uploads/{sent.id}/").status_code == 200


def test_a_pruned_conversation_takes_its_files_along(alice: Any, persona: Any, media: Path) -> None:
    made = upload(alice, "old.png", files.png(), hours_old=24 * 100)
    sent_with(made, persona, days_old=100)

    dry, _ = run("prune_conversations", "--older-than", "90d", "--dry-run")

    # The dry run counts the file the conversation leaves unused, as the real run finds it.
    assert dry[0].startswith("prune_conversations: dry run, would delete 1 conversation(s)")
    assert dry[1].startswith("prune_conversations: dry run, would delete 1 unused upload(s)")

    out, _ = run("prune_conversations", "--older-than", "90d")

    assert out[0].startswith("prune_conversations: deleted 1 conversation(s)")
    assert out[1].startswith("prune_conversations: deleted 1 unused upload(s)")
    assert not Upload.objects.exists()
    assert stored_files(media) == []


def test_with_a_user_only_their_unused_uploads_go_and_no_orphans(
    alice: Any, bob: Any, media: Path
) -> None:
    alices = upload(alice, "a.txt", b"alice's", hours_old=30)
    bobs = upload(bob, "b.txt", b"bob's", hours_old=30)
    crashed = orphan(media, "crashed.txt", b"x", hours_old=30)

    out, _ = run("prune_conversations", "--older-than", "90d", "--user", "alice")

    assert out[1] == (
        "prune_conversations: deleted 1 unused upload(s) of alice (7 B) older than 24h; "
        "stored files no upload names: only without --user"
    )
    assert list(Upload.objects.values_list("id", flat=True)) == [bobs.id]
    assert not (media / alices.file.name).exists()
    assert crashed.exists()


def test_an_object_a_forks_copy_still_names_stays(
    alice: Any, bob: Any, persona: Any, media: Path
) -> None:
    original = upload(alice, "shared.txt", b"both of us", hours_old=30)
    # A fork gives the reader a row of their own naming the same object, on their message.
    copy = Upload.objects.create(
        owner=bob,
        name=original.name,
        kind=original.kind,
        content_type=original.content_type,
        size=original.size,
        file=original.file.name,
        text=original.text,
    )
    chat = Conversation.objects.create(owner=bob, persona=persona)
    message = message_append(conversation=chat, role=Message.Role.USER, content="forked")
    Attachment.objects.create(message=message, upload=copy, position=0)

    run("prune_conversations", "--older-than", "90d")

    assert list(Upload.objects.values_list("id", flat=True)) == [copy.id]
    assert b"".join(logged_in(bob).get(f"/api/uploads/{copy.id}/")) == b"both of us"


def test_the_grace_is_an_option_and_a_bad_one_is_refused(alice: Any, media: Path) -> None:
    made = upload(alice, "a.txt", b"an hour old", hours_old=1)

    with pytest.raises(CommandError, match="Cannot read"):
        run("prune_conversations", "--older-than", "90d", "--upload-grace", "soon")
    out, _ = run("prune_conversations", "--older-than", "90d", "--upload-grace", "30m")

    assert out[1].startswith("prune_conversations: deleted 1 unused upload(s) (11 B)")
    assert not (media / made.file.name).exists()


def test_db_report_counts_uploads_and_the_unused_ones(
    alice: Any, persona: Any, media: Path
) -> None:
    sent_with(upload(alice, "sent.txt", b"s" * 1024, hours_old=30), persona)
    upload(alice, "unused.txt", b"u" * 2048, hours_old=30)
    upload(alice, "new.txt", b"n" * 512)

    lines, _ = run("db_report", "--max-connections-ratio", "0.99")

    assert (
        "uploads: 3 file(s), 3.5 KiB; 1 unused for over a day (2 KiB), "
        "which prune_conversations removes"
    ) in lines
    assert lines[-1].startswith("db_report: OK")
