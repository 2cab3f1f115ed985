"""Walking the active path costs one statement, however long the conversation."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations import services
from conversations.models import Conversation
from conversations.services import message_append

pytestmark = pytest.mark.django_db


def begin_statements(owner: Any, conversation: Conversation) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as captured:
        ctx = services.turn_begin(
            user_id=owner.id,
            conversation_id=conversation.id,
            persona_slug=None,
            content="One more",
            client_id=uuid.uuid4(),
            history_limit=500,
        )
    return len(captured.captured_queries), len(ctx.history)


def chat(owner: Any, persona: Any, messages: int) -> Conversation:
    made = Conversation.objects.create(owner=owner, persona=persona)
    for index in range(messages):
        role = "user" if index % 2 == 0 else "assistant"
        message_append(conversation=made, role=role, content=f"message {index}")
    return made


def test_a_turn_costs_the_same_statements_in_a_long_conversation(alice: Any, persona: Any) -> None:
    short_count, short_history = begin_statements(alice, chat(alice, persona, 4))
    long_count, long_history = begin_statements(alice, chat(alice, persona, 120))
    assert (short_history, long_history) == (4, 120)
    assert long_count == short_count


def test_a_turn_in_a_new_conversation_is_two_statements_and_its_reply_one(
    alice: Any, persona: Any
) -> None:
    """Besides BEGIN and COMMIT: one read (duplicate, user, persona, budget, profile) and one
    write (the conversation and the message); the reply is saved by one statement."""
    with CaptureQueriesContext(connection) as begun:
        ctx = services.turn_begin(
            user_id=alice.id,
            conversation_id=None,
            persona_slug=None,
            content="Hello",
            client_id=uuid.uuid4(),
            history_limit=50,
        )
    with CaptureQueriesContext(connection) as saved:
        reply = services.reply_save(
            message_id=ctx.message_id,
            conversation_id=ctx.conversation_id,
            user_message_id=ctx.user_message_id,
            content="Hi.",
            status="complete",
            input_tokens=3,
            output_tokens=2,
            error="",
        )
    work = [q["sql"] for q in begun.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(work) == 2, work
    assert len(saved.captured_queries) == 1
    assert reply is not None and reply.content == "Hi."
    conversation = Conversation.objects.get(id=ctx.conversation_id)
    assert conversation.current_leaf_id == reply.message_id
    assert services.budget_for(user_id=alice.id).used_tokens == 5


def test_a_connection_plans_the_turns_read_once_not_on_every_turn(alice: Any, persona: Any) -> None:
    """psycopg prepares a statement from its 5th run on a connection: the turn's big read is
    then planned once per pooled connection. Planning was most of PostgreSQL's CPU per
    turn."""
    for index in range(6):
        services.turn_begin(
            user_id=alice.id,
            conversation_id=None,
            persona_slug=None,
            content=f"Hello {index}",
            client_id=uuid.uuid4(),
            history_limit=50,
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("client_id" in sql and "SUM(tokens)" in sql for sql in prepared), prepared


def round_trips(trace: Path) -> tuple[int, str]:
    """How often one trace waited on the server (each wait ends in ReadyForQuery), and
    what it sent."""
    lines = trace.read_text().splitlines()
    waits = sum("\tReadyForQuery\t" in line for line in lines)
    sent = [
        line for line in lines if "\tF\t" in line and ("\tQuery\t" in line or "\tParse\t" in line)
    ]
    return waits, "\n".join(sent)


@pytest.mark.django_db(transaction=True)
def test_a_turn_waits_on_postgresql_twice_in_a_new_conversation_and_four_times_after(
    alice: Any, persona: Any, tmp_path: Path
) -> None:
    """A new conversation: its one read and its one write, with no BEGIN or COMMIT around
    them (the write is a single statement, atomic on its own). An existing one: BEGIN, the
    read with the conversation's lock, the write with the history, COMMIT."""
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement begin is PostgreSQL's")
    first = tmp_path / "new.trace"
    with traced(first):
        ctx = services.turn_begin(
            user_id=alice.id,
            conversation_id=None,
            persona_slug=None,
            content="Hello",
            client_id=uuid.uuid4(),
            history_limit=50,
        )
    waits, sent = round_trips(first)
    assert waits == 2, sent
    assert "BEGIN" not in sent and "COMMIT" not in sent
    assert Conversation.objects.get(id=ctx.conversation_id).current_leaf_id == ctx.user_message_id

    services.reply_save(
        message_id=ctx.message_id,
        conversation_id=ctx.conversation_id,
        user_message_id=ctx.user_message_id,
        content="Hi, Alice.",
        status="complete",
        input_tokens=3,
        output_tokens=2,
        error="",
    )
    again = tmp_path / "existing.trace"
    with traced(again):
        later = services.turn_begin(
            user_id=alice.id,
            conversation_id=ctx.conversation_id,
            persona_slug=None,
            content="More",
            client_id=uuid.uuid4(),
            history_limit=50,
        )
    waits, sent = round_trips(again)
    assert waits == 4, sent
    assert "BEGIN" in sent and "COMMIT" in sent, sent
    assert "FOR UPDATE" in again.read_text()  # the read took the conversation's lock
    assert [item.content for item in later.history] == ["Hello", "Hi, Alice."]


@contextlib.contextmanager
def traced(path: Path) -> Iterator[None]:
    """libpq's trace of everything this thread's connection sends and reads meanwhile."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with path.open("w") as out:
        pgconn.trace(out.fileno())
        try:
            yield
        finally:
            pgconn.untrace()
