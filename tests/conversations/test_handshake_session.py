"""A socket's handshake signs its user in by Channels' `get_user` rules. On PostgreSQL the
everyday case is two statements on the event loop (`services.socket_user_steps`), with no
turn thread; every session `get_user` refuses is refused, by `get_user` itself on a thread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection, connections

from conversations.db import db_call
from conversations.models import Conversation
from tests.conftest import socket_nobody_listens_on
from tests.conversations.session_ends import (
    ENDINGS,
    MODEL_BACKEND,
    end_by_a_new_password,
    signed_in,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def with_cookie(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode())]


def owner_of(conversation_id: str) -> str:
    return Conversation.objects.get(id=conversation_id).owner.username


def session_exists(key: str) -> bool:
    return Session.objects.filter(session_key=key).exists()


@pytest.mark.parametrize(
    "backend",
    [MODEL_BACKEND, "axes.backends.AxesBackend", "accounts.oidc.backend.OIDCBackend"],
)
async def test_a_sockets_handshake_signs_in_on_the_loop_while_every_turn_thread_is_busy(
    ws, alice, persona, fast_demo, turn_threads_held, backend
):
    """Before: the handshake's session and user lookups queued for a turn thread, so a
    page could not even connect while slow work held them all."""
    if connection.vendor != "postgresql":
        pytest.skip("the handshake reads on the event loop on PostgreSQL only")
    key = await db_call(signed_in)(alice, backend)
    await turn_threads_held.hold()

    socket = await asyncio.wait_for(ws(None, extra=with_cookie(key)), timeout=5)

    await socket.send_message("Hello")
    accepted = await socket.receive_type("chat.accepted")
    await turn_threads_held.free()
    assert await db_call(owner_of)(accepted["conversation_id"]) == alice.username


@pytest.mark.parametrize("on_loop", [True, False], ids=["on the loop", "on a thread"])
async def test_a_cookie_signs_in_its_own_user_only(ws, alice, bob, persona, fast_demo, on_loop):
    fast_demo.TURN_DB_ON_LOOP = on_loop
    key = await db_call(signed_in)(bob)

    socket = await ws(None, extra=with_cookie(key))

    await socket.send_message("Whose chat is this?")
    done = await socket.receive_until("chat.done")
    assert await db_call(owner_of)(done[0]["conversation_id"]) == bob.username


@pytest.mark.parametrize("end", ENDINGS)
@pytest.mark.parametrize("on_loop", [True, False], ids=["on the loop", "on a thread"])
async def test_a_session_that_no_longer_signs_in_is_refused_at_the_handshake(
    ws, alice, persona, fast_demo, end, on_loop
):
    fast_demo.TURN_DB_ON_LOOP = on_loop
    key = await db_call(signed_in)(alice)
    await ws(None, extra=with_cookie(key))  # signed in, and remembered as such
    await db_call(end)(alice, key)

    await ws(None, extra=with_cookie(key), expect=False)


async def test_a_stale_password_hash_flushes_the_session_as_channels_does(
    ws, alice, persona, fast_demo
):
    """Channels' get_user deletes a session whose password hash is no longer the user's:
    the loop hands that case to it."""
    key = await db_call(signed_in)(alice)
    await db_call(end_by_a_new_password)(alice, key)

    await ws(None, extra=with_cookie(key), expect=False)

    assert not await db_call(session_exists)(key)


async def test_a_session_of_a_backend_no_longer_configured_is_refused(
    ws, alice, persona, fast_demo
):
    key = await db_call(signed_in)(alice, "accounts.oidc.backend.OIDCBackend")
    fast_demo.AUTHENTICATION_BACKENDS = [MODEL_BACKEND]

    await ws(None, extra=with_cookie(key), expect=False)


async def test_a_session_signed_before_a_key_rotation_is_refused(ws, alice, persona, fast_demo):
    """Its data still decodes (SECRET_KEY_FALLBACKS), but its hash is not the current one:
    Channels' get_user refuses it, and so does the loop."""
    fast_demo.SECRET_KEY = "the-old-key-" + "x" * 50
    key = await db_call(signed_in)(alice)
    fast_demo.SECRET_KEY_FALLBACKS = [fast_demo.SECRET_KEY]
    fast_demo.SECRET_KEY = "the-new-key-" + "y" * 50

    await ws(None, extra=with_cookie(key), expect=False)


async def test_a_socket_without_a_cookie_is_refused_at_once_while_the_database_is_down(
    ws, persona, monkeypatch
):
    """It needs no database: refused (403) at once, not after the handshake's retries for a
    database it never needed, with the loop's connections left to the turns."""
    with socket_nobody_listens_on() as port:
        monkeypatch.setitem(connections["default"].settings_dict, "PORT", port)
        await asyncio.wait_for(ws(None, expect=False), timeout=1)


@pytest.mark.parametrize("cookie", ["", "no-such-session-key-at-all", "x" * 300, "'; --"])
async def test_a_cookie_naming_no_session_is_refused(ws, alice, persona, cookie):
    await ws(None, extra=with_cookie(cookie), expect=False)


async def test_the_first_turn_after_a_handshake_on_the_loop_needs_no_session_decoding(
    ws, alice, persona, fast_demo, monkeypatch
):
    """The handshake remembers the session it accepted (services._signed_in): the socket's
    first turn finds it there and does not decode the session again."""
    if connection.vendor != "postgresql":
        pytest.skip("the handshake reads on the event loop on PostgreSQL only")
    key = await db_call(signed_in)(alice)
    socket = await ws(None, extra=with_cookie(key))
    decoded: list[str] = []
    original = SessionStore.decode

    def decode(self: SessionStore, data: str) -> dict[str, Any]:
        decoded.append(data)
        return original(self, data)

    monkeypatch.setattr(SessionStore, "decode", decode)

    await socket.send_message("Hello")
    await socket.receive_until("chat.done")

    assert decoded == []
