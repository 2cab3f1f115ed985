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
async def test_a_session_ended_with_no_signal_to_its_sockets_ends_them(
    ws, alice, bob, persona, fast_demo
):
    """No signal reaches a socket whose session row was deleted (an operator's "sign out
    everywhere", `clearsessions`) or expired, nor, without Redis, one whose user another
    process changed (`manage.py changepassword`, a deactivation in a shell). Such a socket
    went on hearing the other tabs' messages, and could stop their replies, until it sent
    one itself; the worker's round of checks now closes it (4401), and only it."""
    from datetime import timedelta

    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.utils import timezone

    fast_demo.SOCKET_SESSION_CHECK_SECONDS = 0.2
    deleted, expired, phone = await ws(alice), await ws(alice), await ws(alice)
    bobs = await ws(bob)

    def session_of(socket) -> str:
        return dict(socket.communicator.scope["headers"])[b"cookie"].decode().partition("=")[2]

    def end(deleted_key: str, expired_key: str) -> None:
        Session.objects.filter(session_key=deleted_key).delete()
        past = timezone.now() - timedelta(seconds=1)
        Session.objects.filter(session_key=expired_key).update(expire_date=past)
        # As another process's change looks from here: no signal in this one.
        User.objects.filter(pk=bob.pk).update(password=make_password("changed elsewhere"))

    await db_call(end)(session_of(deleted), session_of(expired))

    assert await close_code(deleted) == 4401
    assert await close_code(expired) == 4401
    assert await close_code(bobs) == 4401
    await phone.send_message("still here")
    assert (await phone.receive_type("chat.done"))["status"] == "complete"


def test_sessions_over_whatever_their_number(alice, bob, monkeypatch):
    """Two queries a thousand sockets (here two, so that seven span four rounds of them):
    the live session stays; the deleted, the expired, and those whose user changed
    password, was deactivated or deleted, or is not the socket's, are over."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from conversations import services

    def signed_in(user) -> str:
        client = Client()
        client.force_login(user)
        key = client.session.session_key
        assert key is not None
        return key

    carol = User.objects.create_user("carol", password="carol-password-1")
    dave = User.objects.create_user("dave", password="dave-password-1")
    live, expired, deleted = signed_in(alice), signed_in(alice), signed_in(alice)
    changed, deactivated, gone = signed_in(bob), signed_in(carol), signed_in(dave)
    sockets = [
        (alice.pk, live),
        (alice.pk, expired),
        (alice.pk, deleted),
        (bob.pk, changed),
        (carol.pk, deactivated),
        (dave.pk, gone),
        (alice.pk, changed),  # Bob's session, claimed for Alice
    ]
    monkeypatch.setattr(services, "_SOCKETS_A_QUERY", 2)
    assert services.sessions_over(sockets=sockets) == {(alice.pk, changed)}

    # As changes made by another process look from here: no signal in this one.
    Session.objects.filter(session_key=expired).update(expire_date=timezone.now())
    Session.objects.filter(session_key=deleted).delete()
    bob.set_password("a new one")
    User.objects.filter(pk=bob.pk).update(password=bob.password)
    User.objects.filter(pk=carol.pk).update(is_active=False)
    User.objects.filter(pk=dave.pk).delete()

    over = services.sessions_over(sockets=sockets)

    assert over == set(sockets) - {(alice.pk, live)}
