"""POST /api/conversations/<id>/messages/: the non-streaming turn, through Django's async test
client against PostgreSQL. Same refusals, same providers and same persistence as the socket."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import AsyncClient

from attachments.judge import judge
from attachments.services import upload_create
from conversations.db import db_call
from conversations.llm.base import PUBLIC_CONFIGURATION_ERROR
from conversations.models import Conversation, Message
from conversations.replies import replylog, worker
from personas.models import Persona
from tests.llm.test_turns import side_work_done
from tests.llm.turn_servers import TurnServer, system_text
from tests.llm.wire_servers import Script, load_events

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

EXPECTED = "Arr, the treasure lies buried on Skull Island."


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


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "media"},
        },
    }


@pytest.fixture
def reply_log(settings: Any) -> Iterator[str]:
    """The reply log in a Redis database of its own, with a heartbeat that lapses in 1 s."""
    url = os.environ.get("TEST_REPLY_LOG_URL", "redis://127.0.0.1:6379/13")
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings.REDIS_URL = url
    settings.HEARTBEAT_SECONDS = 0.2
    settings.HEARTBEAT_TTL = 1
    yield url
    client.flushdb()
    # replylog keeps one client per event loop; this test's loop is gone.
    replylog._clients.clear()


def path(conversation_id: Any) -> str:
    return f"/api/conversations/{conversation_id}/messages/"


async def logged_in(user: Any, *, csrf: bool = False) -> AsyncClient:
    client = AsyncClient(enforce_csrf_checks=csrf)
    await client.aforce_login(user)
    return client


async def post(client: AsyncClient, conversation_id: Any, body: Any, **headers: str) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return await client.post(
        path(conversation_id), data=raw, content_type="application/json", headers=headers
    )


def conversation_of(owner: Any, persona: Persona) -> Conversation:
    return Conversation.objects.create(owner=owner, persona=persona, title="Trip")


def rows(conversation_id: Any) -> list[dict[str, Any]]:
    found = (
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("created_at")
        .values("id", "role", "status", "content", "error", "input_tokens", "output_tokens")
    )
    return [dict(row) for row in found]


def uploaded(owner: Any, name: str, data: bytes) -> str:
    """An upload as POST /api/uploads/ makes it: judged, stored, inserted."""
    made = upload_create(owner_id=owner.pk, name=name, judged=judge(data, name), quota_bytes=0)
    return str(made.id)


def message_count() -> int:
    return Message.objects.count()


# --- a turn -------------------------------------------------------------------------------


async def test_post_answers_with_the_saved_user_message_and_reply(alice, persona, fast_demo):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, {"content": "  Plan a trip to Lisbon  "})

    assert response.status_code == 201
    body = response.json()
    user_message, reply = body["user_message"], body["assistant_message"]
    saved = await db_call(rows)(chat.id)
    assert [str(row["id"]) for row in saved] == [user_message["id"], reply["id"]]
    assert (user_message["role"], user_message["content"]) == ("user", "Plan a trip to Lisbon")
    assert (reply["role"], reply["status"], reply["error"]) == ("assistant", "complete", None)
    assert reply["content"] == saved[1]["content"]
    assert reply["content"].startswith("Hello Alice!")
    assert len(reply["content"].split()) == 30


async def test_a_conversation_made_by_the_api_is_named_by_its_first_message(
    alice, persona, fast_demo
):
    """An HTTP client makes its chats with `POST /api/conversations/`, untitled: the first
    message names it (the heuristic title, then the model's), as it names one made by a
    socket's first `chat.send`; the second message leaves the name alone."""
    client = await logged_in(alice)
    made = (await client.post("/api/conversations/", {}, "application/json")).json()

    await post(client, made["id"], {"content": "Plan a trip to Lisbon\nwith kids, in May"})
    await post(client, made["id"], {"content": "And what about Porto?"})
    await side_work_done()

    assert made["title"] == ""
    found = (await client.get(f"/api/conversations/{made['id']}/")).json()
    assert found["title"] == "Plan a trip to Lisbon"
    assert [item["title"] for item in (await client.get("/api/conversations/")).json()] == [
        "Plan a trip to Lisbon"
    ]


async def test_it_uses_the_same_provider_as_the_socket(openai_upstream, alice, persona):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, {"content": "Where is the treasure?"})

    assert response.status_code == 201
    assert response.json()["assistant_message"]["content"] == EXPECTED
    saved = (await db_call(rows)(chat.id))[1]
    assert (saved["status"], saved["input_tokens"], saved["output_tokens"]) == ("complete", 31, 9)
    (sent,) = openai_upstream.requests_for("reply")
    assert system_text(sent.body).startswith("You are a helpful assistant.")
    assert sent.body["messages"][-1] == {"role": "user", "content": "Where is the treasure?"}


async def test_a_filtered_reply_is_saved_as_an_error_with_its_partial_text(
    openai_upstream, alice, persona
):
    openai_upstream.script = Script(events=load_events("openai_content_filter.json"))
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, {"content": "How do I pick a lock?"})

    assert response.status_code == 201
    reply = response.json()["assistant_message"]
    reason = "The model declined to answer (content filter)."
    assert (reply["status"], reply["content"], reply["error"]) == (
        "error",
        "Arr, I'll tell ye how",
        reason,
    )
    saved = (await db_call(rows)(chat.id))[1]
    assert (saved["status"], saved["content"], saved["error"]) == (
        "error",
        "Arr, I'll tell ye how",
        reason,
    )


async def test_the_same_client_id_twice_saves_one_turn(alice, persona, fast_demo):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)
    client_id = str(uuid.uuid4())

    first = await post(client, chat.id, {"content": "Hello", "client_id": client_id})
    again = await post(client, chat.id, {"content": "Hello", "client_id": client_id})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert len(await db_call(rows)(chat.id)) == 2


# --- refusals -----------------------------------------------------------------------------


async def test_another_users_conversation_is_404_and_nothing_is_saved(
    alice, bob, persona, fast_demo
):
    chat = await db_call(conversation_of)(bob, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, {"content": "Let me in"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert await db_call(message_count)() == 0


async def test_an_unknown_conversation_is_404(alice, persona, fast_demo):
    client = await logged_in(alice)

    response = await post(client, uuid.uuid4(), {"content": "Hello"})

    assert response.status_code == 404


async def test_anonymous_is_401(alice, persona, fast_demo):
    chat = await db_call(conversation_of)(alice, persona)

    response = await post(AsyncClient(), chat.id, {"content": "Hello"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert await db_call(message_count)() == 0


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        {},
        {"content": ""},
        {"content": "   \n  "},
        {"content": 42},
        {"content": "Hi", "client_id": "not-a-uuid"},
    ],
)
async def test_a_malformed_body_is_400_and_nothing_is_saved(alice, persona, fast_demo, body):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"]
    assert await db_call(message_count)() == 0


async def test_attachments_go_with_the_message_as_on_the_socket(
    alice, bob, persona, fast_demo, media
):
    chat = await db_call(conversation_of)(alice, persona)
    mine = await db_call(uploaded)(alice, "notes.md", b"# Packing\n- socks\n")
    bobs = await db_call(uploaded)(bob, "bobs.md", b"# Bob's list\n")
    client = await logged_in(alice)

    foreign = await post(client, chat.id, {"content": "Read this", "attachments": [bobs]})
    malformed = await post(client, chat.id, {"content": "Read this", "attachments": "notes"})
    assert foreign.status_code == 404
    assert foreign.json()["error"]["code"] == "not_found"
    assert malformed.status_code == 400
    assert await db_call(message_count)() == 0

    sent = await post(client, chat.id, {"content": "", "attachments": [mine]})

    # The ids were dropped: a 201 for Bob's file, and the message saved without Alice's.
    assert sent.status_code == 201, sent.content
    attached = sent.json()["user_message"]["attachments"]
    assert [(a["id"], a["name"]) for a in attached] == [(mine, "notes.md")]


async def test_a_message_over_the_limit_is_413(alice, persona, fast_demo):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    at_limit = await post(client, chat.id, {"content": "x" * fast_demo.MAX_MESSAGE_CHARS})
    over = await post(client, chat.id, {"content": "x" * (fast_demo.MAX_MESSAGE_CHARS + 1)})

    assert at_limit.status_code == 201
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "too_large"
    assert await db_call(message_count)() == 2


async def test_a_misconfigured_provider_is_502_and_saves_nothing(alice, persona, settings):
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await post(client, chat.id, {"content": "Hello"})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "provider_error"
    assert error["message"] == PUBLIC_CONFIGURATION_ERROR
    assert await db_call(message_count)() == 0


async def test_other_methods_are_405(alice, persona):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    response = await client.get(path(chat.id))

    assert response.status_code == 405
    assert response["Allow"] == "POST"


async def test_csrf_header_is_required_when_checks_are_enforced(alice, persona, fast_demo):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice, csrf=True)

    refused = await post(client, chat.id, {"content": "Hello"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert await db_call(message_count)() == 0

    page = await client.get("/")  # the chat page sets the CSRF cookie, as in the browser
    assert page.status_code == 200
    token = client.cookies["csrftoken"].value
    accepted = await post(client, chat.id, {"content": "Hello"}, **{"X-CSRFToken": token})
    assert accepted.status_code == 201
    assert await db_call(message_count)() == 2


async def test_a_long_reply_is_not_taken_for_a_dead_workers(reply_log, alice, persona, fast_demo):
    from conversations.replies.recovery import recover_orphans

    fast_demo.DEMO_TOKEN_DELAY_MS = 20
    fast_demo.DEMO_REPLY_WORDS = 120  # about 2.5 s, past the heartbeat's lifetime
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)
    try:
        answer = asyncio.create_task(post(client, chat.id, {"content": "Take your time"}))
        await asyncio.sleep(1.8)
        # What every other worker's recovery loop does every few seconds.
        recovered = await recover_orphans()
        response = await answer
    finally:
        await worker.stop()

    assert recovered == []
    reply = response.json()["assistant_message"]
    assert (reply["status"], len(reply["content"].split())) == ("complete", 120)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        pytest.param("é" * 12_000, 201, id="12000-e-acute"),
        pytest.param("😀" * 16_000, 201, id="16000-emoji"),
        pytest.param("é" * 16_001, 413, id="16001-e-acute"),
        pytest.param("😀" * 16_001, 413, id="16001-emoji"),
    ],
)
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
async def test_the_limit_counts_characters_as_on_the_socket(
    alice, persona, fast_demo, text, status, ensure_ascii
):
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)

    body = json.dumps({"content": text}, ensure_ascii=ensure_ascii)
    response = await post(client, chat.id, body)

    assert response.status_code == status
    if status == 201:
        assert response.json()["user_message"]["content"] == text
        assert (await db_call(rows)(chat.id))[0]["content"] == text
    else:
        assert response.json()["error"]["code"] == "too_large"
        assert await db_call(message_count)() == 0


async def test_over_the_rate_limit_is_429_with_whole_seconds_to_wait(
    alice, persona, fast_demo, one_rate_window
):
    fast_demo.MESSAGES_PER_MINUTE = 1
    chat = await db_call(conversation_of)(alice, persona)
    client = await logged_in(alice)
    assert (await post(client, chat.id, {"content": "one"})).status_code == 201
    refused = await post(client, chat.id, {"content": "two"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    # HTTP's Retry-After is a whole number of seconds (RFC 9110), never "0.4".
    assert refused["Retry-After"].isdigit() and 1 <= int(refused["Retry-After"]) <= 60
    assert await db_call(message_count)() == 2
