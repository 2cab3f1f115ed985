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
