"""Hostile bodies get JSON errors, never Django's HTML pages, and log no traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.conf import settings
from django.test import AsyncClient, Client

from conversations.db import db_call
from conversations.models import Conversation, Message
from personas.models import Persona

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"title": ' * 100_000 + '"x"' + "}" * 100_000


def three_megabytes() -> str:
    return '{"content": "' + "x" * (3 * 1024 * 1024) + '"}'


def assert_json_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in loud] == []


@pytest.fixture
def alice_client(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_json_nested_too_deep_is_400(
    alice_client: Client, alice: Any, persona: Persona, caplog: Any, body: str
) -> None:
    made = Conversation.objects.create(owner=alice, persona=persona, title="Kept")

    created = alice_client.post("/api/conversations/", body, content_type="application/json")
    renamed = alice_client.patch(
        f"/api/conversations/{made.id}/", body, content_type="application/json"
    )

    assert_json_error(created, 400, "invalid")
    assert_json_error(renamed, 400, "invalid")
    assert Conversation.objects.get().title == "Kept"
    assert_no_traceback(caplog)


@pytest.mark.django_db
def test_a_body_over_the_upload_limit_is_413(
    alice_client: Client, alice: Any, persona: Persona, caplog: Any
) -> None:
    made = Conversation.objects.create(owner=alice, persona=persona, title="Kept")
    body = three_megabytes()
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    created = alice_client.post("/api/conversations/", body, content_type="application/json")
    renamed = alice_client.patch(
        f"/api/conversations/{made.id}/", body, content_type="application/json"
    )

    assert_json_error(created, 413, "too_large")
    assert_json_error(renamed, 413, "too_large")
    assert Conversation.objects.count() == 1
    assert_no_traceback(caplog)


@pytest.mark.django_db
def test_a_huge_form_body_is_413_even_in_the_csrf_check(
    alice: Any, persona: Persona, caplog: Any
) -> None:
    # With CSRF enforced the check reads a form body for its token field before any view.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/")  # the page sets the CSRF cookie, as in the browser

    answer = client.post(
        "/api/conversations/",
        "a=" + "x" * (3 * 1024 * 1024),
        content_type="application/x-www-form-urlencoded",
    )

    assert_json_error(answer, 413, "too_large")
    assert not Conversation.objects.exists()
    assert_no_traceback(caplog)


# --- the message API (an async view) ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(DEEP, 400, "invalid", id="nested-100000-deep"),
        pytest.param(three_megabytes(), 413, "too_large", id="3-MB"),
    ],
)
async def test_the_message_api_refuses_them_with_json_too(
    alice: Any, persona: Persona, fast_demo: Any, caplog: Any, body: str, status: int, code: str
) -> None:
    made = await db_call(Conversation.objects.create)(owner=alice, persona=persona)
    client = AsyncClient()
    await client.aforce_login(alice)

    answer = await client.post(
        f"/api/conversations/{made.id}/messages/", body, content_type="application/json"
    )

    assert_json_error(answer, status, code)
    assert not await db_call(Message.objects.exists)()
    assert_no_traceback(caplog)


# Committed: the message view is async, and reads the session from another thread.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("text", ["a\\u0000b", "a\\ud800b", "\\udfff"])
def test_text_no_column_can_hold_is_invalid_not_a_server_error(
    alice_client: Client, alice: Any, persona: Persona, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    chat = Conversation.objects.create(owner=alice, persona=persona, title="Kept")
    reply = Message.objects.create(
        conversation=chat,
        role="assistant",
        content="A reply",
        parent=Message.objects.create(conversation=chat, owner=alice, role="user", content="Q"),
    )
    bodies = [
        ("patch", f"/api/conversations/{chat.id}/", f'{{"title": "{text}"}}'),
        ("post", f"/api/conversations/{chat.id}/messages/", f'{{"content": "{text}"}}'),
        ("put", f"/api/messages/{reply.id}/feedback/", f'{{"rating": 1, "comment": "{text}"}}'),
    ]
    for method, path, body in bodies:
        response = getattr(alice_client, method)(path, body, content_type="application/json")
        assert_json_error(response, 400, "invalid")
    reply.refresh_from_db()
    assert (reply.rating, Conversation.objects.get(id=chat.id).title) == (None, "Kept")
    assert Message.objects.count() == 2
    assert_no_traceback(caplog)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("query", ["a%00b", "%00"])
def test_a_search_for_nul_is_invalid_not_a_server_error(
    alice_client: Client, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    response = alice_client.get(f"/api/conversations/?q={query}")

    assert_json_error(response, 400, "invalid")
    assert_no_traceback(caplog)


@pytest.mark.django_db
def test_a_title_loses_bidi_overrides_and_controls_and_an_invisible_one_is_empty(
    alice_client: Client, alice: Any, persona: Persona
) -> None:
    """A title shows in the list, the tab and on share pages, to others too: a right-to-left
    override there turns the rest of the line around ("invoice\u202efdp.exe" reads as a
    PDF), and a title of zero-width spaces is a blank one."""
    made = Conversation.objects.create(owner=alice, persona=persona, title="Kept")
    url = f"/api/conversations/{made.id}/"

    renamed = alice_client.patch(
        url, {"title": "invoice\u202efdp.exe\u2066 \u0007ok"}, content_type="application/json"
    )
    invisible = alice_client.patch(
        url, {"title": "\u200b\u200b \u2067"}, content_type="application/json"
    )

    assert renamed.status_code == 200
    assert renamed.json()["title"] == "invoicefdp.exe ok"
    assert_json_error(invisible, 400, "invalid")
    assert Conversation.objects.get().title == "invoicefdp.exe ok"
