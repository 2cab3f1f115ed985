"""Two sends of one client_id at once: the one that commits second answers as a re-send."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection, transaction

from conversations import services
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(cursor.fetchone()[0])


def test_a_send_racing_its_twin_gets_the_twins_message_and_leaves_no_conversation(
    alice: Any, persona: Any
) -> None:
    client_id = uuid.uuid4()
    holding, done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        # The twin: its message is inserted, not yet committed, while the second send runs.
        try:
            with transaction.atomic():
                results["first"] = services.turn_begin(
                    user_id=alice.id,
                    conversation_id=None,
                    persona_slug=None,
                    content="Hello",
                    client_id=client_id,
                    history_limit=10,
                )
                holding.set()
                done.wait(30)
        finally:
            connection.close()

    def second() -> None:
        try:
            results["second"] = services.turn_begin(
                user_id=alice.id,
                conversation_id=None,
                persona_slug=None,
                content="Hello",
                client_id=client_id,
                history_limit=10,
            )
        finally:
            connection.close()

    twin = threading.Thread(target=first)
    twin.start()
    assert holding.wait(30)
    racer = threading.Thread(target=second)
    racer.start()
    deadline = time.monotonic() + 30
    while not waiting_on_a_lock() and time.monotonic() < deadline:
        time.sleep(0.02)  # the second insert waits on the twin's uncommitted row
    done.set()
    twin.join(30)
    racer.join(30)

    assert results["second"].duplicate
    assert results["second"].user_message_id == results["first"].user_message_id
    assert results["second"].conversation_id == results["first"].conversation_id
    # The second send left no conversation of its own behind.
    assert Conversation.objects.filter(owner=alice).count() == 1
    assert Message.objects.filter(owner=alice, client_id=client_id).count() == 1


def test_a_send_waiting_on_the_reply_before_it_follows_that_reply(alice: Any, persona: Any) -> None:
    """A follow-up sent (from another tab or worker) while the reply before it is being
    saved: the send waits on the conversation's lock until the save commits, then reads the
    conversation as the save left it. It follows the reply, and the reply is in its history;
    read as it was before the save, it would become a second version of the question."""
    opened = services.turn_begin(
        user_id=alice.id,
        conversation_id=None,
        persona_slug=None,
        content="Hello",
        client_id=uuid.uuid4(),
        history_limit=10,
    )
    holding, done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def save() -> None:
        try:
            with transaction.atomic():
                services.reply_save(
                    message_id=opened.message_id,
                    conversation_id=opened.conversation_id,
                    user_message_id=opened.user_message_id,
                    content="Hi.",
                    status="complete",
                    input_tokens=1,
                    output_tokens=1,
                    error="",
                )
                holding.set()
                done.wait(30)
        finally:
            connection.close()

    def follow_up() -> None:
        try:
            results["sent"] = services.turn_begin(
                user_id=alice.id,
                conversation_id=opened.conversation_id,
                persona_slug=None,
                content="And then?",
                client_id=uuid.uuid4(),
                history_limit=10,
            )
        except Exception as exc:  # the assertion below names it
            results["sent"] = exc
        finally:
            connection.close()

    saver = threading.Thread(target=save)
    saver.start()
    assert holding.wait(30)
    sender = threading.Thread(target=follow_up)
    sender.start()
    deadline = time.monotonic() + 30
    while not waiting_on_a_lock() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert waiting_on_a_lock()  # the send waits for the save to commit
    done.set()
    saver.join(30)
    sender.join(30)

    sent = results["sent"]
    assert not isinstance(sent, Exception), sent
    assert sent.user_parent_id == opened.message_id
    assert [item.content for item in sent.history] == ["Hello", "Hi."]
    conversation = Conversation.objects.get(id=opened.conversation_id)
    assert conversation.current_leaf_id == sent.user_message_id
