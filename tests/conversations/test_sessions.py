"""A socket is only as good as its session, and a refusal costs nothing: no row, no budget,
and no hint that another user's conversation exists."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.contrib.sessions.models import Session
from django.db import IntegrityError, transaction
from django.test import Client

from conversations.db import db_call
from conversations.models import Conversation, Message

pytestmark = [pytest.mark.django_db(transaction=True)]


async def close_code(socket, timeout: float = 10) -> int | None:
    """Frames until the server closes the socket, then its close code."""
    async with asyncio.timeout(timeout):
        while True:
            output = await socket.communicator.receive_output(timeout)
            if output["type"] == "websocket.close":
                return output.get("code")


def user_messages() -> list[str]:
    return list(Message.objects.filter(role="user").values_list("content", flat=True))


@pytest.mark.asyncio
async def test_a_send_after_the_session_ended_is_refused_and_closes(ws, alice, persona):
    socket = await ws(alice)
    # The session is gone without any signal (expired, cleared by an admin's script).
    await db_call(lambda: Session.objects.all().delete())()

    client_id = await socket.send_message("Am I still signed in?")
    refused = await socket.receive()

    assert (refused["type"], refused["code"], refused["client_id"]) == (
        "chat.error",
        "unauthorized",
        client_id,
    )
    assert await close_code(socket) == 4401
    assert await db_call(user_messages)() == []


@pytest.mark.asyncio
async def test_logging_out_closes_that_sessions_socket(ws, alice, persona, fast_demo):
    socket = await ws(alice)
    headers = dict(socket.communicator.scope["headers"])
    cookie = headers[b"cookie"].decode().partition("=")[2]
    phone = await ws(alice)  # another session of Alice's: it stays signed in

    def logout() -> int:
        browser = Client()
        browser.cookies["sessionid"] = cookie
        return browser.post("/accounts/logout/").status_code

    assert await db_call(logout)() == 302
    assert await close_code(socket) == 4401
    await phone.send_message("still here")
    assert (await phone.receive_type("chat.done"))["status"] == "complete"


@pytest.mark.asyncio
async def test_deactivating_the_user_closes_the_socket(ws, alice, persona):
    socket = await ws(alice)

    def deactivate() -> None:
        alice.is_active = False
        alice.save()

    await db_call(deactivate)()
    assert await close_code(socket) == 4401


@pytest.mark.asyncio
async def test_another_users_busy_conversation_is_not_found(ws, alice, bob, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 20
    settings.DEMO_REPLY_WORDS = 200
    bobs = await ws(bob)
    await bobs.send_message("A long one, please")
    accepted = await bobs.receive_type("chat.accepted")
    await bobs.receive_type("chat.delta")

    intruder = await ws(alice)
    client_id = await intruder.send_message(
        "Is anyone there?", conversation_id=accepted["conversation_id"]
    )
    refused = await intruder.receive()

    assert (refused["code"], refused["client_id"]) == ("not_found", client_id)
    await bobs.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    await bobs.receive_type("chat.done")


@pytest.mark.asyncio
async def test_refused_sends_use_none_of_the_budget(ws, alice, persona, fast_demo, one_rate_window):
    fast_demo.MESSAGES_PER_MINUTE = 2
    socket = await ws(alice)
    for _ in range(3):
        await socket.send_message("Hello", persona="no-such-persona")
        assert (await socket.receive())["code"] == "not_found"
        await socket.send_message("Hello", conversation_id=str(uuid.uuid4()))
        assert (await socket.receive())["code"] == "not_found"

    for index in range(2):
        await socket.send_message(f"Counted {index}")
        assert (await socket.receive_type("chat.done"))["status"] == "complete"
    await socket.send_message("Over the limit")
    assert (await socket.receive())["code"] == "rate_limited"


@pytest.mark.asyncio
async def test_a_resend_uses_none_of_the_budget(ws, alice, persona, fast_demo, one_rate_window):
    fast_demo.MESSAGES_PER_MINUTE = 1
    socket = await ws(alice)
    client_id = await socket.send_message("Once")
    await socket.receive_type("chat.done")
    # The page re-sends pending frames after a reconnect: answered, not counted again.
    await socket.send_message("Once", client_id=client_id)
    assert (await socket.receive_type("chat.done"))["status"] == "complete"
    await socket.send_message("Once", client_id=client_id)
    assert (await socket.receive_type("chat.done"))["status"] == "complete"


def test_the_database_holds_one_message_per_user_and_client_id(alice, persona):
    client_id = uuid.uuid4()
    first, second = (Conversation.objects.create(owner=alice, persona=persona) for _ in "ab")
    Message.objects.create(
        conversation=first, owner=alice, role="user", content="one", client_id=client_id
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(
            conversation=second, owner=alice, role="user", content="two", client_id=client_id
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        # A client_id names its owner, or the rule above could be sidestepped.
        Message.objects.create(conversation=second, role="user", content="x", client_id=client_id)


@pytest.mark.asyncio
async def test_a_resend_is_answered_while_every_reply_slot_is_taken(ws, alice, persona, settings):
    settings.MAX_GENERATIONS_PER_USER = 1
    settings.DEMO_TOKEN_DELAY_MS = 20
    settings.DEMO_REPLY_WORDS = 60
    socket = await ws(alice)
    client_id = await socket.send_message("The only reply I may have at once")
    accepted = await socket.receive_type("chat.accepted")
    # A new message is refused: the one slot is taken.
    await socket.send_message("Another one")
    assert (await socket.receive_type("chat.error"))["code"] == "busy"
    # The page re-sends the first after a reconnect: that needs no slot, and is answered.
    again = await ws(alice)
    await again.send_message("The only reply I may have at once", client_id=client_id)
    resent = await again.receive_type("chat.accepted")
    assert resent["message_id"] == accepted["message_id"]
    assert (await again.receive_type("chat.done"))["status"] == "complete"


@pytest.mark.asyncio
async def test_a_session_deleted_or_expired_without_a_logout_ends_its_sockets(
    ws, alice, persona, fast_demo
):
    """No signal tells a socket that its session row was deleted (an operator's "sign out
    everywhere", `clearsessions`) or that it expired. Such a socket went on hearing the
    other tabs' messages, and could stop their replies, until it sent one itself; the
    worker's round of checks now closes it (4401), and only it."""
    from datetime import timedelta

    from django.utils import timezone

    fast_demo.SOCKET_SESSION_CHECK_SECONDS = 0.2
    deleted, expired, phone = await ws(alice), await ws(alice), await ws(alice)

    def session_of(socket) -> str:
        return dict(socket.communicator.scope["headers"])[b"cookie"].decode().partition("=")[2]

    def end(deleted_key: str, expired_key: str) -> None:
        Session.objects.filter(session_key=deleted_key).delete()
        past = timezone.now() - timedelta(seconds=1)
        Session.objects.filter(session_key=expired_key).update(expire_date=past)

    await db_call(end)(session_of(deleted), session_of(expired))

    assert await close_code(deleted) == 4401
    assert await close_code(expired) == 4401
    await phone.send_message("still here")
    assert (await phone.receive_type("chat.done"))["status"] == "complete"


def test_sessions_gone_are_the_deleted_and_the_expired_whatever_their_number(monkeypatch, settings):
    """One query a thousand keys (here two, so that the keys span three queries)."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations import services

    monkeypatch.setattr(services, "_KEYS_A_QUERY", 2)
    now = timezone.now()
    for key, expires in (("live-one", 60), ("live-two", 60), ("expired", -1)):
        Session.objects.create(
            session_key=key, session_data="", expire_date=now + timedelta(seconds=expires)
        )
    keys = ["live-one", "never-was", "expired", "live-two", "deleted"]

    assert services.sessions_gone(session_keys=keys) == {"never-was", "expired", "deleted"}
    # A session kept in its cookie alone is never found over here.
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    assert services.sessions_gone(session_keys=keys) == set()
