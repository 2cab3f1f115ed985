"""The JSON API of docs/protocol.md, through Django's test client against PostgreSQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from conversations import services
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona
from tests.locks import behind_a_lock

pytestmark = pytest.mark.django_db


def logged_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def chat(owner: Any, persona: Persona, title: str = "", *texts: str) -> Conversation:
    made = Conversation.objects.create(owner=owner, persona=persona, title=title)
    for index, text in enumerate(texts):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        message_append(conversation=made, role=role, content=text)
    return made


def streamed(response: Any) -> bytes:
    """A streamed body, read as the ASGI server reads it: asynchronously, piece by piece."""
    assert response.streaming

    async def read() -> bytes:
        return b"".join([part async for part in response.streaming_content])

    return async_to_sync(read)()


def send_json(client: Client, method: str, path: str, body: Any, **extra: Any) -> Any:
    call = getattr(client, method)
    raw = body if isinstance(body, str) else json.dumps(body)
    return call(path, data=raw, content_type="application/json", **extra)


# --- who may call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/personas/"),
        ("get", "/api/conversations/"),
        ("post", "/api/conversations/"),
        ("get", f"/api/conversations/{uuid.uuid4()}/"),
        ("delete", f"/api/conversations/{uuid.uuid4()}/"),
        ("get", f"/api/conversations/{uuid.uuid4()}/export/"),
    ],
)
def test_anonymous_calls_get_401_json_not_a_login_redirect(method: str, path: str) -> None:
    response = getattr(Client(), method)(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_unsafe_methods_need_the_csrf_header(alice: Any, persona: Persona) -> None:
    client = logged_in(alice, csrf=True)
    refused = send_json(client, "post", "/api/conversations/", {})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert not Conversation.objects.exists()

    client.get("/")  # the page sets the CSRF cookie, as in the browser
    token = client.cookies["csrftoken"].value
    made = send_json(client, "post", "/api/conversations/", {}, HTTP_X_CSRFTOKEN=token)
    assert made.status_code == 201


def test_wrong_method_is_405_with_allow(alice: Any) -> None:
    response = logged_in(alice).put("/api/conversations/")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/api/conversations/", "/api/personas/", "/api/usage/"])
def test_head_answers_as_get_without_a_body(alice: Any, persona: Persona, path: str) -> None:
    """HTTP asks every resource that answers GET to answer HEAD (a link checker, a proxy,
    `curl -I`): the same status and headers, no body. An endpoint without GET refuses it."""
    client = logged_in(alice)

    got, head = client.get(path), client.head(path)
    put_only = client.head(f"/api/messages/{uuid.uuid4()}/feedback/")

    assert (head.status_code, head["Content-Type"]) == (200, got["Content-Type"])
    assert head.content == b""
    assert (put_only.status_code, put_only["Allow"]) == (405, "PUT")


# --- personas ---------------------------------------------------------------------------


def test_personas_lists_active_ones_in_order(alice: Any, persona: Persona, pirate: Persona) -> None:
    Persona.objects.create(slug="retired", name="Retired", system_prompt="x", is_active=False)
    answer = logged_in(alice).get("/api/personas/")
    assert answer.status_code == 200
    assert answer.json() == [
        {
            "slug": "assistant",
            "name": "Assistant",
            "description": "Clear and friendly.",
            "avatar": "💬",
            "is_default": True,
            "accepts_images": True,
        },
        {
            "slug": "pirate",
            "name": "Captain Redbeard",
            "description": "Answers in pirate speak.",
            "avatar": "🏴‍☠️",
            "is_default": False,
            "accepts_images": True,
        },
    ]


# --- create -------------------------------------------------------------------------------


def test_create_uses_the_default_persona_or_the_one_named(
    alice: Any, persona: Persona, pirate: Persona
) -> None:
    client = logged_in(alice)
    default = send_json(client, "post", "/api/conversations/", {"persona": None})
    named = send_json(client, "post", "/api/conversations/", {"persona": "pirate"})
    empty_body = client.post("/api/conversations/", content_type="application/json")
    assert default.status_code == named.status_code == empty_body.status_code == 201
    assert default.json()["persona"] == "assistant"
    assert named.json()["persona"] == "pirate"
    assert set(named.json()) == {"id", "title", "persona", "updated_at"}
    assert Conversation.objects.get(id=named.json()["id"]).owner == alice


def test_create_refuses_unknown_persona_and_bad_bodies(alice: Any, persona: Persona) -> None:
    client = logged_in(alice)
    unknown = send_json(client, "post", "/api/conversations/", {"persona": "nobody"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    for body in ("{not json", "[1, 2]", {"persona": 7}):
        bad = send_json(client, "post", "/api/conversations/", body)
        assert bad.status_code == 400, body
        assert bad.json()["error"]["code"] == "invalid"
    assert not Conversation.objects.exists()


def test_create_without_any_persona_is_a_clear_404(alice: Any) -> None:
    answer = logged_in(alice).post("/api/conversations/", content_type="application/json")
    assert answer.status_code == 404
    assert "persona" in answer.json()["error"]["message"].lower()


# --- list and search --------------------------------------------------------------------


def test_list_is_newest_first_and_only_mine(alice: Any, bob: Any, persona: Persona) -> None:
    first = chat(alice, persona, "First")
    second = chat(alice, persona, "Second")
    chat(bob, persona, "Bob's")
    Conversation.objects.filter(id=first.id).update(updated_at=second.updated_at.replace(year=2099))
    answer = logged_in(alice).get("/api/conversations/")
    assert [c["title"] for c in answer.json()] == ["First", "Second"]
    assert answer.json()[0] == {
        "id": str(first.id),
        "title": "First",
        "persona": "assistant",
        "updated_at": "2099" + answer.json()[0]["updated_at"][4:],
    }


def test_search_covers_titles_and_message_text_once_each(
    alice: Any, bob: Any, persona: Persona
) -> None:
    by_title = chat(alice, persona, "Quantum homework")
    by_text = chat(alice, persona, "Physics", "what is quantum tunnelling?", "Quantum is fun.")
    chat(alice, persona, "Cooking", "pasta")
    chat(bob, persona, "Quantum secrets", "quantum")
    answer = logged_in(alice).get("/api/conversations/", {"q": "QUANTUM"})
    assert sorted(c["id"] for c in answer.json()) == sorted([str(by_title.id), str(by_text.id)])
    assert len(logged_in(alice).get("/api/conversations/", {"q": "  "}).json()) == 3


def test_a_long_list_comes_in_pages_linked_by_their_next(
    alice: Any, bob: Any, persona: Persona, settings: Any
) -> None:
    # Past a page (200 in production), the rest was out of reach: no link, no count.
    from conversations import api

    page = api.LIST_LIMIT
    base = Conversation.objects.create(owner=alice, persona=persona, title="c").updated_at
    Conversation.objects.filter(owner=alice).delete()
    made = Conversation.objects.bulk_create(
        Conversation(owner=alice, persona=persona, title=f"c{n}") for n in range(page + 5)
    )
    # Three share one updated_at across the page break: none is lost or repeated.
    for n, conversation in enumerate(made):
        when = base.replace(year=2000) if page - 2 <= n <= page else base.replace(year=2001 + n)
        Conversation.objects.filter(id=conversation.id).update(updated_at=when)
    chat(bob, persona, "Bob's")
    client = logged_in(alice)

    first = client.get("/api/conversations/")
    assert len(first.json()) == page
    link = first.headers["Link"]
    assert link.startswith("</api/conversations/?before=") and link.endswith('>; rel="next"')
    second = client.get(link[1 : link.index(">")])
    assert second.status_code == 200 and "Link" not in second.headers

    titles = [c["title"] for c in first.json() + second.json()]
    assert sorted(titles) == sorted(f"c{n}" for n in range(page + 5))
    assert len(set(titles)) == page + 5
    searched = client.get("/api/conversations/", {"q": "c"})
    assert "q=c" in searched.headers["Link"]
    assert (
        client.get("/api/conversations/", {"before": "yesterday"}).json()["error"]["code"]
        == "invalid"
    )


# --- get, rename, delete ----------------------------------------------------------------


def test_get_returns_the_messages_in_order(alice: Any, persona: Persona) -> None:
    made = chat(alice, persona, "Hi", "hello", "hi there")
    answer = logged_in(alice).get(f"/api/conversations/{made.id}/")
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == str(made.id)
    assert [(m["role"], m["content"], m["status"]) for m in body["messages"]] == [
        ("user", "hello", "complete"),
        ("assistant", "hi there", "complete"),
    ]
    assert {"id", "role", "content", "status", "created_at"} <= set(body["messages"][0])


def test_rename_validates_and_keeps_the_list_order(alice: Any, persona: Persona) -> None:
    made = chat(alice, persona, "Old")
    before = Conversation.objects.get(id=made.id).updated_at
    client = logged_in(alice)
    path = f"/api/conversations/{made.id}/"
    renamed = send_json(client, "patch", path, {"title": "  New   name "})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "New name"
    made.refresh_from_db()
    assert made.title == "New name"
    assert made.updated_at == before, "renaming is not activity"

    for body in ({"title": ""}, {"title": "x" * 201}, {"title": 5}, {}, "nope"):
        bad = send_json(client, "patch", path, body)
        assert bad.status_code == 400, body
        assert bad.json()["error"]["code"] == "invalid"
    assert send_json(client, "patch", path, {"title": "y" * 200}).status_code == 200


def test_delete_removes_the_conversation_and_its_messages(alice: Any, persona: Persona) -> None:
    made = chat(alice, persona, "Bye", "one", "two")
    client = logged_in(alice)
    assert client.delete(f"/api/conversations/{made.id}/").status_code == 204
    assert client.get(f"/api/conversations/{made.id}/").status_code == 404
    assert not Message.objects.exists()


# --- export -----------------------------------------------------------------------------


def test_export_markdown_is_a_download_with_role_headings(alice: Any, pirate: Persona) -> None:
    made = chat(alice, pirate, 'Sail / "plans" <2025>', "Where to?", "Arr, **west**.")
    message_append(conversation=made, role=Message.Role.USER, content="And then?")
    message_append(conversation=made, role=Message.Role.ASSISTANT, content="Half", status="stopped")
    answer = logged_in(alice).get(f"/api/conversations/{made.id}/export/", {"format": "md"})
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/markdown")
    disposition = answer["Content-Disposition"]
    assert disposition == f'attachment; filename="sail-plans-2025-{str(made.id)[:8]}.md"'
    text = streamed(answer).decode()
    assert text.startswith('# Sail / "plans" <2025>\n')
    assert "## You\n\nWhere to?" in text
    assert "## Captain Redbeard\n\nArr, **west**." in text
    assert "## Captain Redbeard (stopped)\n\nHalf" in text


def test_export_json_holds_every_message(alice: Any, persona: Persona) -> None:
    made = chat(alice, persona, "", "a", "b", "c")
    answer = logged_in(alice).get(f"/api/conversations/{made.id}/export/", {"format": "json"})
    assert answer["Content-Type"] == "application/json"
    assert answer["Content-Disposition"].startswith('attachment; filename="conversation-')
    body = json.loads(streamed(answer))
    assert [m["content"] for m in body["messages"]] == ["a", "b", "c"]
    assert body["persona"] == "assistant"
    assert body["persona_name"] == "Assistant"


def test_export_refuses_unknown_formats(alice: Any, persona: Persona) -> None:
    made = chat(alice, persona, "x")
    answer = logged_in(alice).get(f"/api/conversations/{made.id}/export/", {"format": "pdf"})
    assert answer.status_code == 400


# --- another user's ids -----------------------------------------------------------------


def test_bob_gets_404_for_everything_of_alices(alice: Any, bob: Any, persona: Persona) -> None:
    made = chat(alice, persona, "Alice only", "secret", "kept")
    bob_client = logged_in(bob)
    base = f"/api/conversations/{made.id}"
    answers = {
        "page": bob_client.get(f"/c/{made.id}/"),
        "get": bob_client.get(f"{base}/"),
        "export": bob_client.get(f"{base}/export/", {"format": "json"}),
        "rename": send_json(bob_client, "patch", f"{base}/", {"title": "mine now"}),
        "delete": bob_client.delete(f"{base}/"),
    }
    for action, answer in answers.items():
        assert answer.status_code == 404, action
    for action in ("get", "export", "rename", "delete"):
        assert answers[action].json()["error"]["code"] == "not_found", action
    made.refresh_from_db()
    assert made.title == "Alice only"
    assert made.messages.count() == 2
    # The same answer as for an id that does not exist at all.
    assert bob_client.get(f"/api/conversations/{uuid.uuid4()}/").status_code == 404
    assert logged_in(alice).get(f"/c/{made.id}/").status_code == 200


# --- two requests at once -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_delete_racing_a_send_deletes_the_chat_with_the_new_message(
    alice: Any, persona: Persona
) -> None:
    made = Conversation.objects.create(owner=alice, persona=persona)
    client = Client(raise_request_exception=False)  # a server error answers, as it would
    client.force_login(alice)

    def send() -> Any:
        return services.turn_begin(
            user_id=alice.id,
            conversation_id=made.id,
            persona_slug=None,
            content="Hello",
            client_id=uuid.uuid4(),
            history_limit=10,
        )

    # A turn on the chat: its message is written, not yet committed, while the delete runs
    # (and waits for the turn's lock on the conversation).
    race = behind_a_lock(send, lambda: client.delete(f"/api/conversations/{made.id}/"))

    # It failed its foreign-key check at commit (500), the chat and the message kept.
    assert race.answer.status_code == 204
    assert not Conversation.objects.filter(pk=made.pk).exists()
    assert not Message.objects.filter(conversation_id=made.pk).exists()
