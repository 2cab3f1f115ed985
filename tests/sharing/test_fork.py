"""Continuing a shared chat: Bob's fork is a conversation of his own with the snapshot's
messages, persona and files (rows of his naming the same stored objects), untouched by what
Alice does afterwards; refused when the persona is not his to use, and rate limited. The last
test carries the fork on over the real socket stack with the demo model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from attachments.models import Attachment, Upload
from conversations.db import db_call
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona
from tests.attachments import files
from tests.attachments.conftest import stored_files
from tests.sharing.conftest import (
    Branched,
    attach,
    body_of,
    branched_chat,
    contents,
    error_of,
    logged_in,
    share_path,
    uploaded,
)

pytestmark = pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous")

NOTES = b"Feed the cat at six.\n"


def shared_token(owner: Any, chat: Conversation) -> str:
    answer = logged_in(owner).post(share_path(chat))
    assert answer.status_code == 201
    token: str = answer.json()["token"]
    return token


def fork_path(token: str) -> str:
    return f"/api/shares/{token}/fork/"


def counts() -> tuple[int, int, int, int]:
    return (
        Conversation.objects.count(),
        Message.objects.count(),
        Upload.objects.count(),
        Attachment.objects.count(),
    )


@pytest.mark.django_db
def test_bob_continues_a_copy_of_his_own_with_the_messages_persona_and_files(
    alice: Any, bob: Any, persona: Any, pirate: Persona
) -> None:
    chat = branched_chat(alice, pirate, title="Sea cats")
    photo = uploaded(alice, "cat.png", files.png(40, 30))
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(chat.new, photo, notes)
    token = shared_token(alice, chat.chat)
    client = logged_in(bob)

    answer = client.post(fork_path(token))

    assert answer.status_code == 201
    made = answer.json()
    assert made["title"] == "Sea cats"
    assert made["persona"] == "pirate"
    fork = Conversation.objects.get(id=made["id"])
    assert fork.owner == bob
    assert [c["id"] for c in client.get("/api/conversations/").json()] == [made["id"]]
    shown = client.get(f"/api/conversations/{made['id']}/").json()
    assert contents(shown) == ["Tell me about cats", "Cats purr.", "And lions?", "Lions roar."]
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant", "user", "assistant"]
    # One chain, the end of it the one Bob is on.
    assert shown["current_leaf_id"] == shown["messages"][-1]["id"]
    copies = shown["messages"][2]["attachments"]
    assert [(a["name"], a["content_type"]) for a in copies] == [
        ("cat.png", "image/png"),
        ("notes.txt", "text/plain"),
    ]
    rows = [Upload.objects.get(id=a["id"]) for a in copies]
    assert [row.owner for row in rows] == [bob, bob]
    assert [row.file.name for row in rows] == [photo.file.name, notes.file.name]
    assert {row.id for row in rows}.isdisjoint({photo.id, notes.id})
    assert body_of(client.get(copies[1]["url"])) == NOTES
    # Alice's conversation is as it was.
    assert Message.objects.filter(conversation=chat.chat).count() == 6


@pytest.mark.django_db
def test_bobs_copy_and_files_outlive_alices_conversation_and_files(
    alice: Any, bob: Any, branched: Branched, media: Path
) -> None:
    notes = uploaded(alice, "notes.txt", NOTES)
    attach(branched.new, notes)
    token = shared_token(alice, branched.chat)
    fork_id = logged_in(bob).post(fork_path(token)).json()["id"]
    owner = logged_in(alice)

    assert owner.delete(f"/api/conversations/{branched.chat.id}/").status_code == 204
    # Unattached now, so Alice may delete her file too: Bob's row still names the object.
    assert owner.delete(f"/api/uploads/{notes.id}/").status_code == 204

    client = logged_in(bob)
    shown = client.get(f"/api/conversations/{fork_id}/").json()
    assert contents(shown)[2] == "And lions?"
    [copy] = shown["messages"][2]["attachments"]
    assert body_of(client.get(copy["url"])) == NOTES
    assert len(stored_files(media)) == 1
    assert error_of(client.post(fork_path(token))) == (404, "not_found")


@pytest.mark.django_db
def test_alices_later_messages_never_reach_bobs_copy(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)
    client = logged_in(bob)
    fork_id = client.post(fork_path(token)).json()["id"]

    message_append(conversation=branched.chat, role="user", content="Private now")
    shared_token(alice, branched.chat)

    assert "Private now" not in contents(client.get(f"/api/conversations/{fork_id}/").json())


@pytest.mark.django_db
def test_a_persona_bob_may_not_use_refuses_the_fork_and_makes_nothing(
    alice: Any, bob: Any, persona: Any
) -> None:
    staff = Group.objects.create(name="research")
    alice.groups.add(staff)
    private = Persona.objects.create(
        slug="lab", name="Lab Assistant", system_prompt="You help the lab.", order=2
    )
    private.groups.add(staff)
    chat = branched_chat(alice, private)
    attach(chat.new, uploaded(alice, "notes.txt", NOTES))
    token = shared_token(alice, chat.chat)
    before = counts()
    client = logged_in(bob)

    # He can read it...
    assert client.get(f"/api/shares/{token}/").json()["persona"] == "Lab Assistant"
    # ...but not continue it.
    answer = client.post(fork_path(token))

    assert error_of(answer) == (403, "forbidden")
    assert "persona" in answer.json()["error"]["message"]
    assert counts() == before
    assert client.get("/api/conversations/").json() == []
    # Once he is in the group, he may.
    bob.groups.add(staff)
    assert client.post(fork_path(token)).status_code == 201


@pytest.mark.django_db
def test_an_inactive_persona_refuses_the_fork(alice: Any, bob: Any, branched: Branched) -> None:
    token = shared_token(alice, branched.chat)
    Persona.objects.filter(id=branched.chat.persona_id).update(is_active=False)

    assert error_of(logged_in(bob).post(fork_path(token))) == (403, "forbidden")
    assert Conversation.objects.filter(owner=bob).count() == 0


def redis_cache(location: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }


@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["local", "redis"])
def test_forks_are_rate_limited_with_retry_after(
    alice: Any, bob: Any, branched: Branched, settings: Any, backend: str
) -> None:
    if backend == "redis":
        # As in production with REDIS_URL: every worker counts in the same place.
        settings.CACHES = redis_cache(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    settings.SHARE_FORKS_PER_MINUTE = 2
    token = shared_token(alice, branched.chat)
    client = logged_in(bob)
    assert [client.post(fork_path(token)).status_code for _ in range(2)] == [201, 201]

    answer = client.post(fork_path(token))

    assert error_of(answer) == (429, "rate_limited")
    assert 1 <= int(answer["Retry-After"]) <= 60
    assert f"{answer['Retry-After']} seconds" in answer.json()["error"]["message"]
    assert Conversation.objects.filter(owner=bob).count() == 2
    # Alice's own counter is hers.
    assert logged_in(alice).post(fork_path(token)).status_code == 201


@pytest.mark.django_db
def test_with_the_cache_away_forks_still_work(
    alice: Any, bob: Any, branched: Branched, settings: Any
) -> None:
    token = shared_token(alice, branched.chat)
    settings.CACHES = redis_cache("redis://127.0.0.1:1/0")  # nothing listens there
    settings.SHARE_FORKS_PER_MINUTE = 1

    assert [logged_in(bob).post(fork_path(token)).status_code for _ in range(2)] == [201, 201]


@pytest.mark.django_db
def test_forking_needs_sign_in_and_csrf_even_when_shares_are_public(
    alice: Any, bob: Any, branched: Branched, settings: Any
) -> None:
    settings.SHARE_PUBLIC = True
    token = shared_token(alice, branched.chat)

    assert Client().get(f"/api/shares/{token}/").status_code == 200
    assert error_of(Client().post(fork_path(token))) == (401, "unauthorized")
    assert error_of(logged_in(bob, csrf=True).post(fork_path(token))) == (403, "csrf_failed")
    assert error_of(logged_in(bob).get(fork_path(token))) == (405, "method_not_allowed")
    assert Conversation.objects.filter(owner=bob).count() == 0


@pytest.mark.django_db
def test_forking_an_unknown_or_malformed_link_is_the_same_404(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)
    client = logged_in(bob)
    expected = client.get(f"/api/shares/{'x' * 43}/")

    for bad in ("x" * 43, token[:-1], token + "A", "%2e%2e"):
        answer = client.post(fork_path(bad))
        assert (answer.status_code, answer.content) == (404, expected.content), bad
    assert Conversation.objects.filter(owner=bob).count() == 0


def fork_for(owner: Any, reader: Any, persona: Persona) -> str:
    chat = branched_chat(owner, persona)
    token = shared_token(owner, chat.chat)
    answer = logged_in(reader).post(fork_path(token))
    assert answer.status_code == 201
    fork_id: str = answer.json()["id"]
    return fork_id


def path_rows(conversation_id: str, reader: Any) -> list[tuple[str, str]]:
    shown = logged_in(reader).get(f"/api/conversations/{conversation_id}/").json()
    return [(m["role"], m["content"]) for m in shown["messages"]]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bob_sends_a_message_on_his_fork_and_the_reply_follows_the_copy(
    ws: Any, alice: Any, bob: Any, persona: Persona, fast_demo: Any
) -> None:
    fork_id = await db_call(fork_for)(alice, bob, persona)
    socket = await ws(bob)

    await socket.send_message("And tigers?", conversation_id=fork_id)
    frames = await socket.receive_until("chat.done")

    assert frames[0]["conversation_id"] == fork_id
    assert 'You asked: "And tigers?"' in frames[-1]["content"]
    rows = await db_call(path_rows)(fork_id, bob)
    assert [content for _, content in rows[:5]] == [
        "Tell me about cats",
        "Cats purr.",
        "And lions?",
        "Lions roar.",
        "And tigers?",
    ]
    assert rows[5] == ("assistant", frames[-1]["content"])


def fork_with_a_reply_that_never_came(owner: Any, reader: Any, persona: Persona) -> str:
    """Alice's chat where one reply failed before its first word and the last never came:
    the share leaves out replies with no words, so its two questions stand in a row."""
    chat = Conversation.objects.create(owner=owner, persona=persona, title="Gaps")
    message_append(conversation=chat, role="user", content="First try")
    message_append(conversation=chat, role="assistant", content="", status="error")
    message_append(conversation=chat, role="user", content="Second try")
    message_append(conversation=chat, role="assistant", content="Got it.")
    message_append(conversation=chat, role="user", content="Last question")
    token = shared_token(owner, chat)
    answer = logged_in(reader).post(fork_path(token))
    assert answer.status_code == 201
    fork_id: str = answer.json()["id"]
    return fork_id


def shown_messages(conversation_id: str, reader: Any) -> list[dict[str, Any]]:
    shown = logged_in(reader).get(f"/api/conversations/{conversation_id}/").json()
    messages: list[dict[str, Any]] = shown["messages"]
    return messages


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_on_a_fork_with_missing_replies_bob_edits_and_continues_as_in_any_chat(
    ws: Any, alice: Any, bob: Any, persona: Persona, fast_demo: Any
) -> None:
    fork_id = await db_call(fork_with_a_reply_that_never_came)(alice, bob, persona)
    messages = await db_call(shown_messages)(fork_id, bob)
    # A question always follows a reply, as in any chat: where none came, an empty one
    # says so, and the page offers to retry it.
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "First try", "complete"),
        ("assistant", "", "interrupted"),
        ("user", "Second try", "complete"),
        ("assistant", "Got it.", "complete"),
        ("user", "Last question", "complete"),
        ("assistant", "", "interrupted"),
    ]
    socket = await ws(bob)

    # Editing the second question sends it after the reply before it, as the page does.
    await socket.send_message(
        "Second try, edited", conversation_id=fork_id, parent_id=messages[1]["id"]
    )
    accepted = await socket.receive()
    assert accepted["type"] == "chat.accepted", accepted
    await socket.receive_until("chat.done")
    # And a new message goes on after the last question, which stays.
    await socket.send_message("One more", conversation_id=fork_id, parent_id=messages[5]["id"])
    await socket.receive_until("chat.done")
    after = [m["content"] for m in await db_call(shown_messages)(fork_id, bob)]
    assert after[:2] == ["First try", ""]
    assert "Second try, edited" not in after
    assert after[4:7] == ["Last question", "", "One more"]
