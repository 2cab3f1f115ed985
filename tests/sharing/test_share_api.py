"""The owner's share endpoint and the snapshot as JSON, through Django's test client against
PostgreSQL: what is shared (the active path as it was), who may read it, and what a link
that does not work answers. Alice shares; Bob must never control her share."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation
from conversations.services import conversation_lock, message_append
from sharing.models import Share
from sharing.services import token_digest
from tests.locks import behind_a_lock
from tests.sharing.conftest import (
    ALICE_MARKERS,
    Branched,
    contents,
    error_of,
    logged_in,
    share_path,
)

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"[A-Za-z0-9_-]{43,}")


def shared(client: Client, chat: Conversation) -> dict[str, Any]:
    answer = client.post(share_path(chat))
    assert answer.status_code == 201, answer.content
    body: dict[str, Any] = answer.json()
    return body


def read(client: Client, token: str) -> Any:
    return client.get(f"/api/shares/{token}/")


# --- sharing ----------------------------------------------------------------------------------


def test_sharing_answers_the_link_and_the_snapshot_is_the_active_path_only(
    alice: Any, bob: Any, branched: Branched
) -> None:
    answer = logged_in(alice).post(share_path(branched.chat))

    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"token", "url", "created_at"}
    assert TOKEN.fullmatch(body["token"])
    assert body["url"] == f"http://testserver/s/{body['token']}/"
    seen = read(logged_in(bob), body["token"])
    assert seen.status_code == 200
    assert contents(seen.json()) == [
        "Tell me about cats",
        "Cats purr.",
        "And lions?",
        "Lions roar.",
    ]
    assert "zebra" not in seen.content.decode().lower()


def test_the_owner_gets_the_same_link_back(alice: Any, branched: Branched) -> None:
    client = logged_in(alice)
    assert error_of(client.get(share_path(branched.chat))) == (404, "not_found")
    made = shared(client, branched.chat)

    again = client.get(share_path(branched.chat))

    assert again.status_code == 200
    assert again.json() == made


def test_messages_written_after_sharing_stay_private_until_shared_again(
    alice: Any, bob: Any, branched: Branched
) -> None:
    client = logged_in(alice)
    first = shared(client, branched.chat)
    message_append(conversation=branched.chat, role="user", content="A private afterthought")
    message_append(conversation=branched.chat, role="assistant", content="Noted.")
    Conversation.objects.filter(id=branched.chat.id).update(title="Renamed later")

    before = read(logged_in(bob), first["token"]).json()
    assert contents(before)[-1] == "Lions roar."
    assert before["title"] == "Pets"

    second = shared(client, branched.chat)

    assert second["token"] == first["token"]
    assert second["url"] == first["url"]
    assert second["created_at"] >= first["created_at"]
    after = read(logged_in(bob), first["token"]).json()
    assert contents(after)[-2:] == ["A private afterthought", "Noted."]
    assert after["title"] == "Renamed later"
    assert Share.objects.count() == 1


def test_sharing_after_switching_branch_shares_the_other_branch(
    alice: Any, bob: Any, branched: Branched
) -> None:
    client = logged_in(alice)
    token = shared(client, branched.chat)["token"]
    Conversation.objects.filter(id=branched.chat.id).update(current_leaf=branched.old_reply)

    shared(client, branched.chat)

    assert contents(read(logged_in(bob), token).json()) == [
        "Tell me about cats",
        "Cats purr.",
        "And zebras?",
        "Zebras have stripes.",
    ]


def test_a_conversation_with_no_messages_cannot_be_shared(alice: Any, persona: Any) -> None:
    empty = Conversation.objects.create(owner=alice, persona=persona, title="Nothing yet")

    answer = logged_in(alice).post(share_path(empty))

    assert error_of(answer) == (400, "invalid")
    assert not Share.objects.exists()


def test_revoking_makes_the_link_404(alice: Any, bob: Any, branched: Branched) -> None:
    client = logged_in(alice)
    token = shared(client, branched.chat)["token"]

    answer = client.delete(share_path(branched.chat))

    assert answer.status_code == 204
    assert error_of(read(logged_in(bob), token)) == (404, "not_found")
    assert error_of(read(client, token)) == (404, "not_found")
    assert error_of(client.get(share_path(branched.chat))) == (404, "not_found")
    # Revoking what is not shared is no error: the link is gone either way.
    assert client.delete(share_path(branched.chat)).status_code == 204


def test_sharing_after_revoking_gives_a_new_link(alice: Any, bob: Any, branched: Branched) -> None:
    client = logged_in(alice)
    old = shared(client, branched.chat)["token"]
    client.delete(share_path(branched.chat))

    new = shared(client, branched.chat)["token"]

    assert new != old
    assert error_of(read(logged_in(bob), old)) == (404, "not_found")
    assert read(logged_in(bob), new).status_code == 200


def test_deleting_the_conversation_makes_the_link_404(
    alice: Any, bob: Any, branched: Branched
) -> None:
    client = logged_in(alice)
    token = shared(client, branched.chat)["token"]

    assert client.delete(f"/api/conversations/{branched.chat.id}/").status_code == 204

    assert error_of(read(logged_in(bob), token)) == (404, "not_found")
    assert not Share.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_sharing_while_the_conversation_is_deleted_is_404_and_leaves_no_link(
    alice: Any, persona: Any
) -> None:
    chat = Conversation.objects.create(owner=alice, persona=persona)
    message_append(conversation=chat, role="user", content="Tell me about cats")
    client = Client(raise_request_exception=False)  # a server error answers, as it would
    client.force_login(alice)

    def delete() -> None:
        # DELETE /api/conversations/<id>/ in the middle of its transaction: locked, deleted,
        # not yet committed, when the share is asked for.
        assert conversation_lock(conversation_id=chat.id)
        Conversation.objects.filter(id=chat.id).delete()

    race = behind_a_lock(delete, lambda: client.post(share_path(chat)))

    # It failed its foreign-key check at commit: a 500 for a chat that no longer exists.
    assert error_of(race.answer) == (404, "not_found")
    assert not Share.objects.exists()


# --- whose share ------------------------------------------------------------------------------


def test_bob_cannot_share_revoke_or_see_the_link_of_alices_conversation(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]
    client = logged_in(bob)

    assert error_of(client.post(share_path(branched.chat))) == (404, "not_found")
    assert error_of(client.get(share_path(branched.chat))) == (404, "not_found")
    assert error_of(client.delete(share_path(branched.chat))) == (404, "not_found")

    # Still shared, with the same link and snapshot.
    assert read(client, token).status_code == 200
    assert Share.objects.get().token == token


def test_signed_out_the_share_endpoint_is_401(alice: Any, branched: Branched) -> None:
    for method in ("get", "post", "delete"):
        assert error_of(getattr(Client(), method)(share_path(branched.chat))) == (
            401,
            "unauthorized",
        )
    assert not Share.objects.exists()


def test_sharing_and_revoking_need_the_csrf_header(alice: Any, branched: Branched) -> None:
    client = logged_in(alice, csrf=True)

    assert error_of(client.post(share_path(branched.chat))) == (403, "csrf_failed")
    assert not Share.objects.exists()

    shared(logged_in(alice), branched.chat)
    assert error_of(client.delete(share_path(branched.chat))) == (403, "csrf_failed")
    assert Share.objects.exists()

    client.get("/")  # the page sets the CSRF cookie, as a browser gets it
    csrf = client.cookies["csrftoken"].value
    assert (
        client.delete(share_path(branched.chat), headers={"X-CSRFToken": csrf}).status_code == 204
    )


# --- what a reader gets ---------------------------------------------------------------------


def test_the_snapshot_has_the_protocols_shape_and_nothing_of_the_owner(
    marked_alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared(logged_in(marked_alice), branched.chat)["token"]

    answer = read(logged_in(bob), token)

    assert answer.status_code == 200
    body = answer.json()
    # PROTOCOL.md's keys, and the additive ones the page draws the persona with: a key more
    # (an owner, an id) would have to be added here knowingly.
    assert set(body) == {
        "title",
        "persona",
        "persona_avatar",
        "persona_description",
        "created_at",
        "messages",
    }
    assert body["title"] == "Pets"
    assert body["persona"] == "Assistant"
    assert body["created_at"] == Share.objects.get().created_at.isoformat()
    for message in body["messages"]:
        assert set(message) == {"role", "content", "status", "created_at", "attachments"}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant"]
    text = answer.content.decode()
    for marker in (*ALICE_MARKERS.values(), "AliceFirst-2p6r", "AliceLast-3t9v"):
        assert marker not in text
    # No id of Alice's: not her account's, the conversation's, or any message's.
    for message_id in (
        branched.first.id,
        branched.reply.id,
        branched.new.id,
        branched.new_reply.id,
    ):
        assert str(message_id) not in text
    assert str(branched.chat.id) not in text
    assert body["persona_avatar"] == "💬"
    assert body["persona_description"] == "Clear and friendly."


def test_a_reply_that_never_got_a_word_is_left_out(alice: Any, bob: Any, persona: Any) -> None:
    chat = Conversation.objects.create(owner=alice, persona=persona, title="Cut off")
    message_append(conversation=chat, role="user", content="Hello?")
    message_append(conversation=chat, role="assistant", content="", status="error")

    token = shared(logged_in(alice), chat)["token"]

    assert contents(read(logged_in(bob), token).json()) == ["Hello?"]


def test_signed_out_readers_get_401_unless_shares_are_public(
    alice: Any, branched: Branched, settings: Any
) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]

    assert error_of(read(Client(), token)) == (401, "unauthorized")
    # The same 401 for a token that opens nothing: a stranger learns nothing of which exist.
    assert read(Client(), "x" * 43).content == read(Client(), token).content

    settings.SHARE_PUBLIC = True
    answer = read(Client(), token)
    assert answer.status_code == 200
    assert contents(answer.json())[0] == "Tell me about cats"


def test_reading_is_get_or_head_only(alice: Any, bob: Any, branched: Branched) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]

    answer = logged_in(bob).post(f"/api/shares/{token}/")

    assert error_of(answer) == (405, "method_not_allowed")
    assert answer["Allow"] == "GET, HEAD"
    head = logged_in(bob).head(f"/api/shares/{token}/")
    assert (head.status_code, head["Content-Type"], head.content) == (200, "application/json", b"")
    assert logged_in(bob).head("/api/shares/" + "x" * 43 + "/").status_code == 404


# --- links that do not work -------------------------------------------------------------------


def bad_tokens(token: str) -> list[str]:
    last = "A" if token[-1] != "A" else "B"
    return [
        "x" * 43,  # well formed, unknown
        token[:-1] + last,  # differs only in its last character
        token[:42],  # one short
        token + "A",  # one long
        token[:20],
        "x" * 500,
        token[:42] + ".",
        token[:42] + "%3D",  # a percent-encoded "="
        "%2e%2e",  # "..", percent-encoded
        "%C3%A9" * 8,  # é
        "a+b~c!d$e'f(g)h*i,j;k=l@m",
        token.lower() if token.lower() != token else token.upper(),
    ]


def test_unknown_revoked_and_malformed_tokens_all_answer_the_same_404(
    alice: Any, bob: Any, branched: Branched, persona: Any
) -> None:
    client = logged_in(alice)
    token = shared(client, branched.chat)["token"]
    other = Conversation.objects.create(owner=alice, persona=persona, title="Other")
    message_append(conversation=other, role="user", content="Hi")
    revoked = shared(client, other)["token"]
    client.delete(share_path(other))
    reader = logged_in(bob)
    expected = read(reader, "x" * 43)
    assert expected.status_code == 404

    for bad in [*bad_tokens(token), revoked]:
        answer = read(reader, bad)
        assert answer.status_code == 404, bad
        assert answer.content == expected.content, bad
        assert "noindex" in answer["X-Robots-Tag"], bad
    assert read(reader, token).status_code == 200


def test_paths_no_token_could_make_answer_as_an_unknown_token_does(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]
    reader = logged_in(bob)
    expected = read(reader, "x" * 43)

    for path in (
        f"/api/shares/{token[:20]}%2F{token[20:]}/",  # a percent-encoded slash
        "/api/shares//",
        f"/api/shares/{token}/extra/",
        f"/api/shares/{token}/files/",
        f"/api/shares/{token}/files/not-a-uuid/",
    ):
        answer = reader.get(path)
        assert (answer.status_code, answer.content) == (404, expected.content), path
        assert "noindex" in answer["X-Robots-Tag"], path


def test_a_token_is_looked_up_by_its_digest_never_by_itself(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]
    share = Share.objects.get()
    assert share.digest == token_digest(token)
    reader = logged_in(bob)

    for tried in (token, "x" * 43, token[:10]):
        with CaptureQueriesContext(connection) as queries:
            read(reader, tried)
        lookups = [q["sql"] for q in queries if '"sharing_share"' in q["sql"]]
        assert lookups, tried
        first = lookups[0]
        assert '"sharing_share"."digest" =' in first
        assert '"sharing_share"."token" =' not in first
        # The token itself never reaches the database: only its digest does.
        assert tried not in first
        assert all(tried not in q["sql"] for q in queries)


def test_tokens_are_256_random_bits(alice: Any, persona: Any) -> None:
    client = logged_in(alice)
    tokens = set()
    for n in range(5):
        chat = Conversation.objects.create(owner=alice, persona=persona, title=f"{n}")
        message_append(conversation=chat, role="user", content="Hi")
        tokens.add(shared(client, chat)["token"])

    assert len(tokens) == 5
    assert all(TOKEN.fullmatch(t) and len(t) >= 43 for t in tokens)


# --- noindex ----------------------------------------------------------------------------------


def test_every_share_answer_is_noindex_and_not_cached(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared(logged_in(alice), branched.chat)["token"]
    answers = [
        read(logged_in(bob), token),
        read(logged_in(bob), "x" * 43),
        read(Client(), token),
        logged_in(bob).get(f"/s/{token}/"),
        logged_in(bob).get("/s/nothing-here/"),
        Client().get(f"/s/{token}/"),
        logged_in(bob).post(f"/api/shares/{'x' * 43}/fork/"),
        logged_in(bob).get(f"/api/shares/{token}/files/00000000-0000-0000-0000-000000000000/"),
    ]

    for answer in answers:
        assert "noindex" in answer["X-Robots-Tag"], answer.status_code
        assert "no-store" in answer["Cache-Control"]
        assert answer["Referrer-Policy"] == "no-referrer"
    assert [a.status_code for a in answers] == [200, 404, 401, 200, 404, 302, 404, 404]
