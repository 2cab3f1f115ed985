"""Branches over the JSON API: the active path, other versions, switching, feedback,
regenerate and the tree in exports; through Django's test clients against PostgreSQL.
Alice owns every conversation here; Bob must never see any of it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from conversations.db import db_call
from conversations.models import Conversation, Message
from conversations.replies.registry import registry
from conversations.serializers import MESSAGE_CHUNK
from conversations.services import message_append
from personas.models import Persona
from tests.api.test_conversations_api import streamed
from tests.llm.turn_servers import TurnServer
from tests.llm.wire_servers import Script, load_events


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def send_json(client: Client, method: str, path: str, body: Any, **extra: Any) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return getattr(client, method)(path, data=raw, content_type="application/json", **extra)


def detail(conversation_id: Any) -> str:
    return f"/api/conversations/{conversation_id}/"


def feedback_path(message_id: Any) -> str:
    return f"/api/messages/{message_id}/feedback/"


def contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


@dataclass
class Edited:
    """Alice's conversation where the second question was edited and resent:
    first → reply → (old → old reply | new → new reply), the new branch active."""

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


def edited_chat(owner: Any, persona: Persona) -> Edited:
    chat = Conversation.objects.create(owner=owner, persona=persona, title="Pets")
    first = message_append(conversation=chat, role="user", content="Tell me about cats")
    reply = message_append(conversation=chat, role="assistant", content="Cats purr.")
    old = message_append(conversation=chat, role="user", content="And zebras?")
    old_reply = message_append(
        conversation=chat, role="assistant", content="Zebras have stripes.", status="stopped"
    )
    move_leaf(chat, reply)
    new = message_append(conversation=chat, role="user", content="And lions?")
    new_reply = message_append(
        conversation=chat,
        role="assistant",
        content="Lions roar.",
        input_tokens=31,
        output_tokens=9,
        error="",
    )
    return Edited(chat, first, reply, old, old_reply, new, new_reply)


@pytest.fixture
def edited(alice: Any, persona: Persona) -> Edited:
    return edited_chat(alice, persona)


# --- GET: the active path and its versions ------------------------------------------------


@pytest.mark.django_db
def test_after_an_edit_get_shows_the_new_branch_with_its_versions(alice: Any, edited: Edited):
    answer = logged_in(alice).get(detail(edited.chat.id))

    assert answer.status_code == 200
    body = answer.json()
    assert body["current_leaf_id"] == str(edited.new_reply.id)
    assert contents(body) == ["Tell me about cats", "Cats purr.", "And lions?", "Lions roar."]
    first, reply, new, new_reply = body["messages"]
    assert [m["parent_id"] for m in body["messages"]] == [
        None,
        str(edited.first.id),
        str(edited.reply.id),
        str(edited.new.id),
    ]
    assert new["siblings"] == [str(edited.old.id), str(edited.new.id)]
    assert first["siblings"] == [str(edited.first.id)]
    assert reply["siblings"] == [str(edited.reply.id)]
    assert new_reply["siblings"] == [str(edited.new_reply.id)]
    assert new_reply["usage"] == {"input_tokens": 31, "output_tokens": 9}
    assert reply["usage"] is None
    assert (new_reply["feedback"], new_reply["error"], new_reply["status"]) == (
        None,
        None,
        "complete",
    )
    assert {"id", "role", "content", "status", "created_at", "error"} <= set(first)


@pytest.mark.django_db
def test_first_messages_with_no_parent_are_versions_of_each_other(
    alice: Any, persona: Persona
) -> None:
    chat = Conversation.objects.create(owner=alice, persona=persona)
    one = message_append(conversation=chat, role="user", content="Version one")
    message_append(conversation=chat, role="assistant", content="Reply one")
    Conversation.objects.filter(id=chat.id).update(current_leaf=None)
    chat.current_leaf = None
    two = message_append(conversation=chat, role="user", content="Version two")

    body = logged_in(alice).get(detail(chat.id)).json()

    assert contents(body) == ["Version two"]
    assert body["messages"][0]["siblings"] == [str(one.id), str(two.id)]
    assert body["messages"][0]["parent_id"] is None


@pytest.mark.django_db
def test_get_reads_the_tree_once_and_the_path_in_chunks(alice: Any, persona: Persona) -> None:
    chat = Conversation.objects.create(owner=alice, persona=persona)
    for index in range(2 * MESSAGE_CHUNK + 1):
        message_append(
            conversation=chat, role="user" if index % 2 == 0 else "assistant", content=str(index)
        )
    client = logged_in(alice)

    with CaptureQueriesContext(connection) as queries:
        body = client.get(detail(chat.id)).json()

    assert contents(body) == [str(i) for i in range(2 * MESSAGE_CHUNK + 1)]
    reads = [q for q in queries if 'FROM "conversations_message"' in q["sql"]]
    assert len(reads) == 1 + 3, "one skeleton, then a query per chunk of the path"


# --- ?leaf=: another branch, without moving -----------------------------------------------


@pytest.mark.django_db
def test_leaf_shows_the_old_branch_and_the_active_path_stays(alice: Any, edited: Edited):
    client = logged_in(alice)

    old = client.get(detail(edited.chat.id), {"leaf": str(edited.old.id)})

    assert old.status_code == 200
    # Through the old question, continued down to its reply.
    assert contents(old.json()) == [
        "Tell me about cats",
        "Cats purr.",
        "And zebras?",
        "Zebras have stripes.",
    ]
    assert old.json()["messages"][2]["siblings"] == [str(edited.old.id), str(edited.new.id)]
    assert old.json()["messages"][3]["status"] == "stopped"
    assert old.json()["current_leaf_id"] == str(edited.new_reply.id)
    # Through a shared message: down its newest branch.
    shared = client.get(detail(edited.chat.id), {"leaf": str(edited.first.id)})
    assert contents(shared.json())[-1] == "Lions roar."
    again = client.get(detail(edited.chat.id)).json()
    assert contents(again)[-1] == "Lions roar."
    edited.chat.refresh_from_db()
    assert edited.chat.current_leaf_id == edited.new_reply.id


@pytest.mark.django_db
def test_leaf_of_unknown_or_another_conversation_is_404(
    alice: Any, persona: Persona, edited: Edited
) -> None:
    other = edited_chat(alice, persona)
    client = logged_in(alice)

    for leaf in (str(uuid.uuid4()), str(other.new.id)):
        answer = client.get(detail(edited.chat.id), {"leaf": leaf})
        assert answer.status_code == 404, leaf
        assert answer.json()["error"]["code"] == "not_found"
        assert answer.json()["error"]["message"]
    bad = client.get(detail(edited.chat.id), {"leaf": "not-an-id"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid"


# --- PATCH: switching the active path -----------------------------------------------------


@pytest.mark.django_db
def test_patch_moves_the_active_path_and_a_later_get_keeps_it(alice: Any, edited: Edited):
    client = logged_in(alice)
    before = Conversation.objects.get(id=edited.chat.id).updated_at

    moved = send_json(
        client, "patch", detail(edited.chat.id), {"current_leaf_id": str(edited.old.id)}
    )

    assert moved.status_code == 200
    body = moved.json()
    assert body["current_leaf_id"] == str(edited.old_reply.id), "continued down its branch"
    assert contents(body) == [
        "Tell me about cats",
        "Cats purr.",
        "And zebras?",
        "Zebras have stripes.",
    ]
    assert body["title"] == "Pets"
    assert client.get(detail(edited.chat.id)).json() == body
    saved = Conversation.objects.get(id=edited.chat.id)
    assert saved.current_leaf_id == edited.old_reply.id
    assert saved.updated_at == before, "switching versions is not activity"


@pytest.mark.django_db
def test_patch_renames_and_moves_at_once(alice: Any, edited: Edited) -> None:
    client = logged_in(alice)
    body = {"title": " Big  cats ", "current_leaf_id": str(edited.reply.id)}

    answer = send_json(client, "patch", detail(edited.chat.id), body)

    assert answer.status_code == 200
    assert answer.json()["title"] == "Big cats"
    assert answer.json()["current_leaf_id"] == str(edited.new_reply.id)
    assert client.get("/api/conversations/").json()[0]["title"] == "Big cats"


@pytest.mark.django_db
def test_patch_refuses_bad_unknown_and_foreign_leaves(
    alice: Any, persona: Persona, edited: Edited
) -> None:
    other = edited_chat(alice, persona)
    client = logged_in(alice)
    path = detail(edited.chat.id)

    for value in (None, 5, "nope", ["x"]):
        bad = send_json(client, "patch", path, {"current_leaf_id": value, "title": "Never"})
        assert bad.status_code == 400, value
        assert bad.json()["error"]["code"] == "invalid"
    for value in (str(uuid.uuid4()), str(other.old.id)):
        missing = send_json(client, "patch", path, {"current_leaf_id": value, "title": "Never"})
        assert missing.status_code == 404, value
        assert missing.json()["error"]["code"] == "not_found"
    saved = Conversation.objects.get(id=edited.chat.id)
    assert (saved.title, saved.current_leaf_id) == ("Pets", edited.new_reply.id)


# --- feedback -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_feedback_rates_a_reply_and_zero_clears_it(alice: Any, edited: Edited) -> None:
    client = logged_in(alice)
    path = feedback_path(edited.new_reply.id)

    down = send_json(client, "put", path, {"rating": -1, "comment": " Too short. "})
    assert down.status_code == 200
    assert down.json() == {"rating": -1, "comment": "Too short."}
    shown = client.get(detail(edited.chat.id)).json()["messages"][-1]
    assert shown["feedback"] == -1
    saved = Message.objects.get(id=edited.new_reply.id)
    assert (saved.rating, saved.rating_comment) == (-1, "Too short.")
    assert saved.rated_at is not None

    up = send_json(client, "put", path, {"rating": 1})
    assert up.json() == {"rating": 1, "comment": ""}
    assert client.get(detail(edited.chat.id)).json()["messages"][-1]["feedback"] == 1

    cleared = send_json(client, "put", path, {"rating": 0, "comment": "ignored"})
    assert cleared.status_code == 200
    assert cleared.json() == {"rating": None, "comment": ""}
    saved.refresh_from_db()
    assert (saved.rating, saved.rating_comment, saved.rated_at) == (None, "", None)
    assert client.get(detail(edited.chat.id)).json()["messages"][-1]["feedback"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"rating": 2},
        {"rating": "1"},
        {"rating": True},
        {"rating": 1.5},
        {"rating": None},
        {"rating": 1, "comment": 5},
        {"rating": -1, "comment": "x" * 2001},
        "[1]",
        "{nope",
    ],
)
@pytest.mark.django_db
def test_feedback_refuses_bad_bodies(alice: Any, edited: Edited, body: Any) -> None:
    answer = send_json(logged_in(alice), "put", feedback_path(edited.new_reply.id), body)

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid"
    assert Message.objects.get(id=edited.new_reply.id).rating is None


@pytest.mark.django_db
def test_feedback_takes_a_comment_at_the_limit_and_refuses_user_messages(
    alice: Any, edited: Edited
) -> None:
    client = logged_in(alice)
    at_limit = {"rating": -1, "comment": "x" * 2000}
    assert send_json(client, "put", feedback_path(edited.reply.id), at_limit).status_code == 200

    mine = send_json(client, "put", feedback_path(edited.new.id), {"rating": 1})
    assert mine.status_code == 400
    assert mine.json()["error"]["code"] == "invalid"
    assert Message.objects.get(id=edited.new.id).rating is None
    unknown = send_json(client, "put", feedback_path(uuid.uuid4()), {"rating": 1})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    wrong_method = client.post(feedback_path(edited.reply.id))
    assert (wrong_method.status_code, wrong_method["Allow"]) == (405, "PUT")


@pytest.mark.django_db
def test_feedback_needs_login_and_the_csrf_header(alice: Any, edited: Edited) -> None:
    path = feedback_path(edited.new_reply.id)
    anonymous = send_json(Client(), "put", path, {"rating": 1})
    assert anonymous.status_code == 401
    client = logged_in(alice, csrf=True)
    refused = send_json(client, "put", path, {"rating": 1})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert Message.objects.get(id=edited.new_reply.id).rating is None

    client.get("/")  # the page sets the CSRF cookie, as in the browser
    token = client.cookies["csrftoken"].value
    accepted = send_json(client, "put", path, {"rating": 1}, HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200


# --- bob ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bob_gets_404_for_alices_branches(alice: Any, bob: Any, edited: Edited) -> None:
    bob_client = logged_in(bob)
    path = detail(edited.chat.id)
    answers = {
        "leaf": bob_client.get(path, {"leaf": str(edited.old.id)}),
        "switch": send_json(bob_client, "patch", path, {"current_leaf_id": str(edited.old.id)}),
        "rate": send_json(bob_client, "put", feedback_path(edited.new_reply.id), {"rating": -1}),
        "clear": send_json(bob_client, "put", feedback_path(edited.new_reply.id), {"rating": 0}),
    }

    for action, answer in answers.items():
        assert answer.status_code == 404, action
        assert answer.json()["error"]["code"] == "not_found", action
    saved = Conversation.objects.get(id=edited.chat.id)
    assert saved.current_leaf_id == edited.new_reply.id
    assert Message.objects.get(id=edited.new_reply.id).rating is None
    # Bob's own conversation cannot show Alice's message either.
    own = edited_chat(bob, edited.chat.persona)
    leaked = bob_client.get(detail(own.chat.id), {"leaf": str(edited.old.id)})
    assert leaked.status_code == 404


# --- export -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_json_export_holds_both_branches_with_their_parents(alice: Any, edited: Edited):
    answer = logged_in(alice).get(
        f"/api/conversations/{edited.chat.id}/export/", {"format": "json"}
    )

    body = json.loads(streamed(answer))
    assert body["current_leaf_id"] == str(edited.new_reply.id)
    parents = {m["content"]: m["parent_id"] for m in body["messages"]}
    assert parents == {
        "Tell me about cats": None,
        "Cats purr.": str(edited.first.id),
        "And zebras?": str(edited.reply.id),
        "Zebras have stripes.": str(edited.old.id),
        "And lions?": str(edited.reply.id),
        "Lions roar.": str(edited.new.id),
    }


@pytest.mark.django_db
def test_markdown_export_is_the_active_path_only(alice: Any, edited: Edited) -> None:
    client = logged_in(alice)
    path = f"/api/conversations/{edited.chat.id}/export/"

    text = streamed(client.get(path, {"format": "md"})).decode()

    assert "And lions?" in text and "Lions roar." in text
    assert "zebra" not in text.lower()
    send_json(client, "patch", detail(edited.chat.id), {"current_leaf_id": str(edited.old.id)})
    switched = streamed(client.get(path, {"format": "md"})).decode()
    assert "## Assistant (stopped)\n\nZebras have stripes." in switched
    assert "lions" not in switched.lower()


# --- turns over HTTP: edit and resend, regenerate -----------------------------------------


@pytest.fixture
def openai_upstream(settings: Any) -> Iterator[TurnServer]:
    server = TurnServer.openai()
    server.start()
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = "test-key"
    settings.OPENAI_BASE_URL = f"{server.base_url}/v1"
    settings.OPENAI_MODEL = "gpt-4o-mini"
    settings.LLM_RETRY_BACKOFF = 0.01
    server.script = Script(events=load_events("openai_stream_ok.json"))
    yield server
    server.stop()


async def async_client(user: Any) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def post_json(client: AsyncClient, path: str, body: Any) -> Any:
    return await client.post(path, data=json.dumps(body), content_type="application/json")


def say(client: AsyncClient, conversation_id: Any, body: dict[str, Any]) -> Any:
    return post_json(client, f"/api/conversations/{conversation_id}/messages/", body)


def regenerate(client: AsyncClient, message_id: Any, body: dict[str, Any] | None = None) -> Any:
    return post_json(client, f"/api/messages/{message_id}/regenerate/", body or {})


def new_chat(owner: Any, persona: Persona) -> Conversation:
    return Conversation.objects.create(owner=owner, persona=persona, title="Trip")


def message_count() -> int:
    return Message.objects.count()


def prompt_text(server: TurnServer) -> str:
    """Every message of the latest prompt the model was sent, as one text."""
    sent = server.requests_for("reply")[-1].body["messages"]
    return "\n".join(str(m["content"]) for m in sent)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_edit_and_resend_over_http_makes_a_version(alice, persona, fast_demo):
    chat = await db_call(new_chat)(alice, persona)
    client = await async_client(alice)
    first = (await say(client, chat.id, {"content": "Plan a trip"})).json()
    old = (await say(client, chat.id, {"content": "To Oslo"})).json()
    reply_id = first["assistant_message"]["id"]

    edited = await say(client, chat.id, {"content": "To Rome", "parent_id": reply_id})

    assert edited.status_code == 201
    new = edited.json()
    assert new["user_message"]["parent_id"] == reply_id
    assert new["assistant_message"]["parent_id"] == new["user_message"]["id"]
    body = (await client.get(detail(chat.id))).json()
    assert contents(body)[::2] == ["Plan a trip", "To Rome"]
    assert body["messages"][2]["siblings"] == [old["user_message"]["id"], new["user_message"]["id"]]
    assert body["current_leaf_id"] == new["assistant_message"]["id"]
    leaf = old["user_message"]["id"]
    assert contents((await client.get(detail(chat.id), {"leaf": leaf})).json())[2] == "To Oslo"

    restart = await say(client, chat.id, {"content": "Start over", "parent_id": None})
    assert restart.status_code == 201
    roots = (await client.get(detail(chat.id))).json()["messages"]
    assert contents({"messages": roots})[0] == "Start over"
    assert roots[0]["siblings"] == [
        first["user_message"]["id"],
        restart.json()["user_message"]["id"],
    ]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_resend_after_anything_but_a_reply_of_this_conversation_is_404(
    alice, persona, fast_demo
):
    chat = await db_call(new_chat)(alice, persona)
    other = await db_call(new_chat)(alice, persona)
    client = await async_client(alice)
    first = (await say(client, chat.id, {"content": "Hello"})).json()
    elsewhere = (await say(client, other.id, {"content": "Hi"})).json()
    count = await db_call(message_count)()

    for parent in (
        first["user_message"]["id"],  # a user message, not a reply
        elsewhere["assistant_message"]["id"],  # a reply of another conversation
        str(uuid.uuid4()),
    ):
        answer = await say(client, chat.id, {"content": "Edited", "parent_id": parent})
        assert answer.status_code == 404, parent
        assert answer.json()["error"]["code"] == "not_found"
    bad = await say(client, chat.id, {"content": "Edited", "parent_id": "nope"})
    assert bad.status_code == 400
    assert await db_call(message_count)() == count


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_regenerate_over_http_makes_a_sibling_from_the_active_path(
    openai_upstream, alice, persona
):
    chat = await db_call(new_chat)(alice, persona)
    client = await async_client(alice)
    first = (await say(client, chat.id, {"content": "Tell me about cats"})).json()
    await say(client, chat.id, {"content": "What about zebras?"})
    reply_id = first["assistant_message"]["id"]
    edited = await say(client, chat.id, {"content": "What about lions?", "parent_id": reply_id})
    target = edited.json()["assistant_message"]
    client_id = str(uuid.uuid4())

    answer = await regenerate(client, target["id"], {"client_id": client_id})

    assert answer.status_code == 201
    made = answer.json()
    assert made["user_message"]["id"] == edited.json()["user_message"]["id"]
    version = made["assistant_message"]
    assert version["id"] != target["id"]
    assert version["parent_id"] == target["parent_id"]
    assert version["usage"] == {"input_tokens": 31, "output_tokens": 9}
    # The model heard the active path, never the edited-away branch.
    prompt = prompt_text(openai_upstream)
    assert "Tell me about cats" in prompt and "What about lions?" in prompt
    assert "zebras" not in prompt
    body = (await client.get(detail(chat.id))).json()
    assert body["current_leaf_id"] == version["id"]
    assert body["messages"][-1]["siblings"] == [target["id"], version["id"]]
    assert contents(body)[-2] == "What about lions?"

    again = await regenerate(client, target["id"], {"client_id": client_id})
    assert (again.status_code, again.json()) == (201, made)
    assert len(openai_upstream.requests_for("reply")) == 4, "the repeat generated nothing"
    assert await db_call(message_count)() == 7


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_regenerate_is_busy_while_a_reply_is_generated(alice, persona, fast_demo):
    chat = await db_call(new_chat)(alice, persona)
    client = await async_client(alice)
    first = (await say(client, chat.id, {"content": "Hello"})).json()
    fast_demo.DEMO_TOKEN_DELAY_MS = 20
    fast_demo.DEMO_REPLY_WORDS = 60
    running = asyncio.create_task(say(client, chat.id, {"content": "Take your time"}))
    for _ in range(200):
        if registry.get(chat.id) is not None:
            break
        await asyncio.sleep(0.01)

    busy = await regenerate(client, first["assistant_message"]["id"])

    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "busy"
    assert (await running).status_code == 201
    assert await db_call(message_count)() == 4
    later = await regenerate(client, first["assistant_message"]["id"])
    assert later.status_code == 201


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_regenerate_refuses_foreign_unknown_and_user_messages(alice, bob, persona, fast_demo):
    chat = await db_call(new_chat)(alice, persona)
    alice_client = await async_client(alice)
    first = (await say(alice_client, chat.id, {"content": "Secret plans"})).json()
    bob_client = await async_client(bob)
    count = await db_call(message_count)()

    refusals = [
        (bob_client, first["assistant_message"]["id"], 404),
        (bob_client, first["user_message"]["id"], 404),
        (alice_client, str(uuid.uuid4()), 404),
        (alice_client, first["user_message"]["id"], 404),
    ]
    for client, message_id, status in refusals:
        answer = await regenerate(client, message_id)
        assert answer.status_code == status, message_id
        assert answer.json()["error"]["code"] == "not_found"
    bad = await regenerate(alice_client, first["assistant_message"]["id"], {"client_id": "x"})
    assert bad.status_code == 400
    assert (await regenerate(AsyncClient(), first["assistant_message"]["id"])).status_code == 401
    assert await db_call(message_count)() == count
