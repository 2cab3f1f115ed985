"""Files inside a share: listed with links under the token, served as downloads that never
run, and only the files the snapshot holds. Alice's files are stored with the upload service
in a folder of the test's; Bob reads them through the share, or not at all."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from attachments.serve import FILE_CSP
from conversations.models import Conversation
from conversations.services import message_append
from tests.attachments import files
from tests.sharing.conftest import (
    Branched,
    attach,
    body_of,
    error_of,
    logged_in,
    move_leaf,
    share_path,
    uploaded,
)

pytestmark = [
    pytest.mark.django_db,
    # Downloads stream with an async iterator, as ASGI serves them; Django's sync test client
    # consumes it through async_to_sync and warns that it has to.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous"),
]

NOTES = b"Feed the cat at six.\n"


def file_url(token: str, upload_id: Any) -> str:
    return f"/api/shares/{token}/files/{upload_id}/"


def shared_token(owner: Any, chat: Conversation) -> str:
    answer = logged_in(owner).post(share_path(chat))
    assert answer.status_code == 201
    token: str = answer.json()["token"]
    return token


def test_a_shared_messages_files_are_listed_and_download_without_running(
    alice: Any, bob: Any, branched: Branched
) -> None:
    photo = uploaded(alice, "cat.png", files.png(40, 30))
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, photo, notes)
    token = shared_token(alice, branched.chat)
    reader = logged_in(bob)

    listed = reader.get(f"/api/shares/{token}/").json()["messages"]

    question = listed[2]
    assert question["content"] == "And lions?"
    assert [
        (a["name"], a["content_type"], a["size"], a["url"]) for a in question["attachments"]
    ] == [
        ("cat.png", "image/png", photo.size, file_url(token, photo.id)),
        ("notes.txt", "text/plain", len(NOTES), file_url(token, notes.id)),
    ]
    assert [m["attachments"] for i, m in enumerate(listed) if i != 2] == [[], [], []]
    answer = reader.get(file_url(token, notes.id))
    assert answer.status_code == 200
    assert body_of(answer) == NOTES
    assert answer["Content-Type"] == "text/plain; charset=utf-8"
    assert answer["Content-Disposition"] == 'attachment; filename="notes.txt"'
    assert answer["X-Content-Type-Options"] == "nosniff"
    assert answer["Content-Security-Policy"] == FILE_CSP
    assert "sandbox" in answer["Content-Security-Policy"]
    assert "noindex" in answer["X-Robots-Tag"]
    image = reader.get(file_url(token, photo.id))
    assert image["Content-Type"] == "image/png"
    assert image["Content-Disposition"] == 'attachment; filename="cat.png"'
    with photo.file.open("rb") as stored:
        assert body_of(image) == stored.read()


def test_a_file_on_the_branch_not_shared_is_neither_listed_nor_served(
    alice: Any, bob: Any, branched: Branched
) -> None:
    hidden = uploaded(alice, "zebra.txt", b"Stripes, privately.\n")
    attach(branched.old, hidden)
    token = shared_token(alice, branched.chat)
    reader = logged_in(bob)

    body = reader.get(f"/api/shares/{token}/").content.decode()

    assert str(hidden.id) not in body and "zebra.txt" not in body
    assert error_of(reader.get(file_url(token, hidden.id))) == (404, "not_found")


def test_alices_other_files_and_bobs_own_are_not_found_under_her_token(
    alice: Any, bob: Any, branched: Branched, persona: Any
) -> None:
    attach(branched.new, uploaded(alice, "shared.txt", b"In the share.\n"))
    token = shared_token(alice, branched.chat)
    unattached = uploaded(alice, "diary.txt", b"Unsent.\n")
    elsewhere = uploaded(alice, "taxes.txt", b"Another chat.\n")
    other = Conversation.objects.create(owner=alice, persona=persona, title="Taxes")
    attach(message_append(conversation=other, role="user", content="see"), elsewhere)
    later = uploaded(alice, "later.txt", b"After sharing.\n")
    move_leaf(branched.chat, branched.new_reply)
    attach(message_append(conversation=branched.chat, role="user", content="one more"), later)
    bobs = uploaded(bob, "bobs.txt", b"Bob's own.\n")
    reader = logged_in(bob)
    not_found = reader.get(file_url(token, "00000000-0000-0000-0000-000000000000"))
    assert error_of(not_found) == (404, "not_found")

    for upload in (unattached, elsewhere, later, bobs):
        answer = reader.get(file_url(token, upload.id))
        assert answer.status_code == 404, upload.name
        assert answer.content == not_found.content
    # Alice herself gets no more through her link than anyone.
    assert logged_in(alice).get(file_url(token, unattached.id)).status_code == 404


def test_after_revoking_the_files_are_gone_from_the_link(
    alice: Any, bob: Any, branched: Branched
) -> None:
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, notes)
    token = shared_token(alice, branched.chat)
    reader = logged_in(bob)
    assert reader.get(file_url(token, notes.id)).status_code == 200

    logged_in(alice).delete(share_path(branched.chat))

    assert error_of(reader.get(file_url(token, notes.id))) == (404, "not_found")
    # The owner still has her file.
    assert body_of(logged_in(alice).get(f"/api/uploads/{notes.id}/")) == NOTES


def test_a_file_under_a_malformed_token_is_the_same_404(
    alice: Any, bob: Any, branched: Branched
) -> None:
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, notes)
    token = shared_token(alice, branched.chat)
    reader = logged_in(bob)

    answers = [reader.get(file_url(t, notes.id)) for t in ("x" * 43, token[:-1], token + "x")]

    assert {(a.status_code, a.content) for a in answers} == {
        (404, reader.get(f"/api/shares/{'x' * 43}/").content)
    }


def test_signed_out_files_are_401_unless_shares_are_public(
    alice: Any, branched: Branched, settings: Any
) -> None:
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, notes)
    token = shared_token(alice, branched.chat)

    assert error_of(Client().get(file_url(token, notes.id))) == (401, "unauthorized")

    settings.SHARE_PUBLIC = True
    assert body_of(Client().get(file_url(token, notes.id))) == NOTES


def test_a_file_whose_object_is_lost_is_404_not_an_error(
    alice: Any, bob: Any, branched: Branched
) -> None:
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, notes)
    token = shared_token(alice, branched.chat)
    notes.file.storage.delete(notes.file.name)

    assert error_of(logged_in(bob).get(file_url(token, notes.id))) == (404, "not_found")
