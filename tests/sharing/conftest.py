"""Alice's conversations and files for the share tests: built with the project's own services
(the branching ones for the tree, the upload ones for files stored in a folder of the test's),
read back through Django's test client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import Profile
from attachments.judge import judge
from attachments.models import Attachment, Upload
from attachments.services import upload_create
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona

# Who Alice is, in words no share may contain: each would only reach a reader by a leak.
ALICE_MARKERS = {
    "username": "alice-username-7f3q",
    "email": "alice-mail-9k2w@example.org",
    "display_name": "Alice-Display-4h8z",
    "about": "Alice-About-Lives-at-12-Elm-Street-5m1x",
}


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": root},
        },
    }
    settings.SHARE_PUBLIC = False
    return root


@pytest.fixture
def marked_alice(alice: Any) -> Any:
    alice.username = ALICE_MARKERS["username"]
    alice.email = ALICE_MARKERS["email"]
    alice.first_name = "AliceFirst-2p6r"
    alice.last_name = "AliceLast-3t9v"
    alice.save()
    Profile.objects.filter(user=alice).update(
        display_name=ALICE_MARKERS["display_name"], about=ALICE_MARKERS["about"]
    )
    return alice


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def share_path(conversation: Conversation) -> str:
    return f"/api/conversations/{conversation.id}/share/"


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


@dataclass
class Branched:
    """Alice's conversation edited at its second question: first → reply → (old → old reply |
    new → new reply), the new branch the one she is on."""

    chat: Conversation
    first: Message
    reply: Message
    old: Message
    old_reply: Message
    new: Message
    new_reply: Message


def move_leaf(chat: Conversation, message: Message) -> None:
    Conversation.objects.filter(id=chat.id).update(current_leaf=message)
    chat.current_leaf = message


def branched_chat(owner: Any, persona: Persona, title: str = "Pets") -> Branched:
    chat = Conversation.objects.create(owner=owner, persona=persona, title=title)
    first = message_append(conversation=chat, role="user", content="Tell me about cats")
    reply = message_append(conversation=chat, role="assistant", content="Cats purr.")
    old = message_append(conversation=chat, role="user", content="And zebras?")
    old_reply = message_append(conversation=chat, role="assistant", content="Zebras have stripes.")
    move_leaf(chat, reply)
    new = message_append(conversation=chat, role="user", content="And lions?")
    new_reply = message_append(conversation=chat, role="assistant", content="Lions roar.")
    return Branched(chat, first, reply, old, old_reply, new, new_reply)


@pytest.fixture
def branched(alice: Any, persona: Persona) -> Branched:
    return branched_chat(alice, persona)


def uploaded(owner: Any, name: str, data: bytes) -> Upload:
    """An upload as POST /api/uploads/ makes it: judged (re-encoded), stored, inserted."""
    return upload_create(owner_id=owner.pk, name=name, judged=judge(data, name), quota_bytes=0)


def attach(message: Message, *uploads: Upload) -> None:
    for position, upload in enumerate(uploads):
        Attachment.objects.create(message=message, upload=upload, position=position)


def body_of(response: Any) -> bytes:
    return b"".join(response)
