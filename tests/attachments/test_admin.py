"""Uploads in Django admin: staff list and delete them; a deleted upload's file goes after the
commit, and one on a message stays until its message goes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from attachments.models import Attachment, Upload
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.attachments import files
from tests.attachments.conftest import logged_in, post_file, stored_files

pytestmark = [pytest.mark.django_db(transaction=True)]

CHANGELIST = reverse("admin:attachments_upload_changelist")


@pytest.fixture
def staff(django_db_blocker: Any) -> Client:
    root = get_user_model().objects.create_superuser("root", "root@example.org", None)
    return logged_in(root)


def uploaded(owner: Any, name: str, data: bytes) -> Upload:
    answer = post_file(logged_in(owner), name, data)
    assert answer.status_code == 201, answer.content
    return Upload.objects.get(id=answer.json()["id"])


def on_a_message(made: Upload, persona: Any) -> None:
    chat = Conversation.objects.create(owner=made.owner, persona=persona)
    message = message_append(conversation=chat, role=Message.Role.USER, content="look")
    Attachment.objects.create(message=message, upload=made, position=0)


def test_staff_see_each_upload_with_its_name_kind_size_and_owner(
    staff: Client, alice: Any, bob: Any
) -> None:
    uploaded(alice, "shot.png", files.png())
    uploaded(bob, "notes.txt", b"n" * 2048)

    page = staff.get(CHANGELIST)

    assert page.status_code == 200
    rows = {
        name: dict(re.findall(r'<td class="field-(\w+)[^"]*">([^<]*)</td>', cells))
        for name, cells in re.findall(
            r'<th class="field-name"><a [^>]*>([^<]*)</a></th>(.*?)</tr>', page.content.decode()
        )
    }
    assert rows["shot.png"]["owner"] == "alice"
    assert rows["shot.png"]["kind"] == "Image"
    assert rows["notes.txt"] == {
        "owner": "bob",
        "kind": "Text",
        "size_shown": "2 KiB",
        "created_at": rows["notes.txt"]["created_at"],
    }


def test_an_upload_opens_read_only_and_cannot_be_added(staff: Client, alice: Any) -> None:
    made = uploaded(alice, "notes.md", b"# Only to look at")

    page = staff.get(reverse("admin:attachments_upload_change", args=[made.pk]))

    assert page.status_code == 200
    assert "# Only to look at" in page.content.decode()
    assert 'name="name"' not in page.content.decode()
    # The stored name, as text: no link to a URL that serves nothing (files leave only
    # through the owner's download).
    assert made.file.name in page.content.decode()
    assert settings.MEDIA_URL not in page.content.decode()
    assert staff.get(reverse("admin:attachments_upload_add")).status_code == 403


def test_a_user_who_is_not_staff_is_sent_to_the_admin_sign_in(alice: Any) -> None:
    page = logged_in(alice).get(CHANGELIST)

    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login"))


def test_deleting_an_upload_in_admin_removes_its_file(
    staff: Client, alice: Any, media: Path
) -> None:
    made = uploaded(alice, "abusive.png", files.png())
    kept = uploaded(alice, "fine.txt", b"fine")
    delete = reverse("admin:attachments_upload_delete", args=[made.pk])

    confirm = staff.get(delete)
    done = staff.post(delete, {"post": "yes"})

    assert confirm.status_code == 200
    assert done.status_code == 302
    assert list(Upload.objects.values_list("id", flat=True)) == [kept.id]
    assert stored_files(media) == [media / kept.file.name]


def test_deleting_selected_uploads_removes_their_files(
    staff: Client, alice: Any, bob: Any, media: Path
) -> None:
    chosen = [uploaded(alice, "a.txt", b"a"), uploaded(bob, "b.txt", b"b")]
    kept = uploaded(alice, "c.txt", b"c")

    done = staff.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [str(u.pk) for u in chosen],
            "post": "yes",
        },
    )

    assert done.status_code == 302
    assert list(Upload.objects.values_list("id", flat=True)) == [kept.id]
    assert stored_files(media) == [media / kept.file.name]


def test_an_upload_on_a_message_cannot_be_deleted_in_admin(
    staff: Client, alice: Any, persona: Any, media: Path
) -> None:
    made = uploaded(alice, "in-use.png", files.png())
    on_a_message(made, persona)
    delete = reverse("admin:attachments_upload_delete", args=[made.pk])

    confirm = staff.get(delete)
    refused = staff.post(delete, {"post": "yes"})
    selected = staff.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [str(made.pk)], "post": "yes"}
    )

    # Admin names what holds it back, and deletes nothing.
    assert "would require deleting the following protected related objects" in (
        confirm.content.decode()
    )
    assert refused.status_code == 200
    assert "protected related objects" in refused.content.decode()
    assert "protected related objects" in selected.content.decode()
    assert Upload.objects.filter(pk=made.pk).exists()
    assert stored_files(media) == [media / made.file.name]
