"""A turn's statements on the event loop (conversations/db.py `turn_call`): its begin and
its reply's save need no turn thread, use no more connections than `DB_CALL_THREADS`, hold
none in a transaction while replies stream, survive the server ending their connections,
and a database they cannot reach is `unavailable` with nothing saved. The begin's rare
paths (a re-send, an edit) run on a thread."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from django.conf import settings
from django.db import DataError, connection, connections

from conversations.db import LOOP_APPLICATION_NAME, db_call, loop_run
from conversations.models import Conversation, Message
from conversations.turn_sql import Statement, Steps
from tests.conftest import admin_dsn, make_user, socket_nobody_listens_on

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("turns run on the event loop on PostgreSQL only")


def loop_backends() -> dict[int, str]:
    """The loop's connections to the test database: pid -> state."""
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            [settings.DATABASES["default"]["NAME"], LOOP_APPLICATION_NAME],
        ).fetchall()
    return dict(rows)


def terminate(pids: list[int]) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def saved_messages() -> list[str]:
    return list(Message.objects.order_by("created_at").values_list("content", flat=True))


async def test_a_reply_streams_and_is_saved_while_every_turn_thread_is_busy(
    ws, alice, persona, fast_demo, turn_threads_held
):
    """Slow database work elsewhere (an export, a re-send's lookup) holds every turn thread:
    a new message is still accepted, answered and saved, all on the event loop."""
    socket = await ws(alice)
    await turn_threads_held.hold()

    await socket.send_message("Are you there?")
    frames = await socket.receive_until("chat.done", timeout=10)
    await turn_threads_held.free()

    assert frames[0]["type"] == "chat.accepted"
    assert frames[-1]["status"] == "complete"
    assert await db_call(saved_messages)() == ["Are you there?", frames[-1]["content"]]


@pytest.mark.parametrize("on_loop", [True, False], ids=["on the loop", "on threads"])
async def test_a_follow_up_and_an_edit_carry_the_history_either_way(
    ws, alice, persona, fast_demo, on_loop
):
    """The same steps run on the loop or on a thread (TURN_DB_ON_LOOP), with the same
    result; an edit takes the ORM, so on the loop it runs again on a thread."""
    fast_demo.TURN_DB_ON_LOOP = on_loop
    socket = await ws(alice)
    await socket.send_message("First question")
    first = await socket.receive_until("chat.done")
    conversation_id = first[0]["conversation_id"]
    await socket.send_message("Second question", conversation_id=conversation_id)
    second = await socket.receive_until("chat.done")
    await socket.send_message(
        "Second, better", conversation_id=conversation_id, parent_id=first[0]["message_id"]
    )
    edited = await socket.receive_until("chat.done")

    assert 'You asked: "Second question"' in second[-1]["content"]
    assert 'You asked: "Second, better"' in edited[-1]["content"]
    # Both follow the first reply: the edit is a second version of the second question.
    first_reply = first[0]["message_id"]
    for frames in (second, edited):
        sent = await db_call(Message.objects.get)(id=frames[0]["user_message_id"])
        assert str(sent.parent_id) == first_reply
    conversation = await db_call(Conversation.objects.get)(id=conversation_id)
    assert str(conversation.current_leaf_id) == edited[-1]["message_id"]


async def test_the_loop_uses_as_many_connections_as_turn_threads_and_none_in_a_transaction(
    ws, persona, fast_demo
):
    """Eight sends at once, with two turn threads' worth of connections: the loop opens at
    most two, and while the eight replies stream none of them is in a transaction."""
    fast_demo.DB_CALL_THREADS = 2
    fast_demo.DEMO_TOKEN_DELAY_MS = 50
    users = [await db_call(make_user)(f"many{index}") for index in range(8)]
    sockets = [await ws(user) for user in users]
    for index, one in enumerate(sockets):
        await one.send_message(f"question {index}")
    for one in sockets:
        await one.receive_type("chat.delta")

    streaming = await asyncio.to_thread(loop_backends)
    answers = [await one.receive_type("chat.done") for one in sockets]

    assert [answer["status"] for answer in answers] == ["complete"] * 8
    assert 1 <= len(streaming) <= 2
    assert set(streaming.values()) == {"idle"}


async def test_turns_after_the_servers_connections_ended_find_live_ones(
    ws, alice, persona, fast_demo, monkeypatch
):
    """What a database restart leaves: the loop's connections closed by the server, used
    moments ago. The next turns are still answered; without the check the first failed."""
    monkeypatch.setattr("conversations.db.QUIET_SECONDS", 3600.0)  # only the socket tells
    socket = await ws(alice)
    await socket.send_message("before")
    await socket.receive_type("chat.done")
    pids = list(await asyncio.to_thread(loop_backends))
    assert pids

    await asyncio.to_thread(terminate, pids)

    for index in range(3):
        await socket.send_message(f"after {index}")
        answer = await socket.receive()
        assert answer["type"] == "chat.accepted", answer
        await socket.receive_type("chat.done")
    assert not set(await asyncio.to_thread(loop_backends)) & set(pids)


async def test_a_database_the_loop_cannot_reach_is_unavailable_and_saves_nothing(
    ws, alice, persona, fast_demo, monkeypatch
):
    socket = await ws(alice)
    with socket_nobody_listens_on() as port:
        monkeypatch.setitem(connections["default"].settings_dict, "PORT", port)
        await socket.send_message("into the void")
        refused = await socket.receive()
    monkeypatch.undo()

    assert refused["type"] == "chat.error"
    assert refused["code"] == "unavailable"
    assert await db_call(saved_messages)() == []
    await socket.send_message("and again")  # the database back, the same socket goes on
    assert (await socket.receive_type("chat.done"))["status"] == "complete"


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "in a transaction"])
async def test_a_statement_the_server_refused_leaves_its_connection_fit_for_the_next_turn(
    ws, alice, persona, fast_demo, atomic
):
    """A loop connection keeps one cursor for all its statements. One the server refuses
    fails its own call alone, as Django's error; the connection, kept with its cursor,
    answers the next turn."""
    fast_demo.DB_CALL_THREADS = 1  # one connection: the turn must run on the one that failed

    def refused() -> Steps[None]:
        yield Statement("SELECT 1 / 0", [])

    with pytest.raises(DataError):
        await loop_run(refused(), atomic=atomic)
    failed_on = set(await asyncio.to_thread(loop_backends))

    socket = await ws(alice)
    await socket.send_message("after the refusal")
    answer = await socket.receive_type("chat.done")

    assert answer["status"] == "complete"
    assert await db_call(saved_messages)() == ["after the refusal", answer["content"]]
    assert set(await asyncio.to_thread(loop_backends)) == failed_on
