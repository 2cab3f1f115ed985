"""Conversations saved before branching become single chains, read as they were shown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.services import path_history

BEFORE = [("conversations", "0002_message_owner")]
AFTER = [("conversations", "0003_message_tree")]


def migrate(target: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    return executor.loader.project_state(target).apps


@pytest.fixture
def old_apps(alice: Any, persona: Any) -> Any:
    apps = migrate(BEFORE)
    yield apps
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def write(apps: Any, conversation: Any, rows: list[tuple[str, str, str, str | None, int]]) -> dict:
    """rows: (key, role, status, key of the message answered, minute it was saved)."""
    OldMessage = apps.get_model("conversations", "Message")
    start = timezone.now() - timedelta(days=2)
    made: dict[str, Any] = {}
    for key, role, status, answers, minute in rows:
        message = OldMessage.objects.create(
            conversation_id=conversation.id,
            role=role,
            content=f"text of {key}",
            status=status,
            owner_id=conversation.owner_id if role == "user" else None,
            reply_to_id=made[answers].id if answers else None,
        )
        OldMessage.objects.filter(id=message.id).update(
            created_at=start + timedelta(minutes=minute)
        )
        made[key] = message
    return made


@pytest.mark.django_db(transaction=True)
def test_old_conversations_become_the_chains_they_were(old_apps: Any, alice: Any) -> None:
    OldConversation = old_apps.get_model("conversations", "Conversation")
    persona_id = old_apps.get_model("personas", "Persona").objects.get().id

    def conversation() -> Any:
        return OldConversation.objects.create(owner_id=alice.id, persona_id=persona_id)

    every_status = conversation()
    chain = write(
        old_apps,
        every_status,
        [
            ("u1", "user", "complete", None, 0),
            ("a1", "assistant", "complete", "u1", 1),
            ("u2", "user", "complete", None, 2),
            ("a2", "assistant", "stopped", "u2", 3),
            ("u3", "user", "complete", None, 4),
            ("a3", "assistant", "error", "u3", 5),
            # u4's worker died: its reply was saved by recovery long after u5 was answered.
            ("u4", "user", "complete", None, 6),
            ("u5", "user", "complete", None, 7),
            ("a5", "assistant", "complete", "u5", 8),
            ("a4", "assistant", "interrupted", "u4", 20),
        ],
    )
    unanswered_end = conversation()
    tail = write(
        old_apps,
        unanswered_end,
        [
            ("u1", "user", "complete", None, 0),
            ("a1", "assistant", "complete", "u1", 1),
            ("u2", "user", "complete", None, 2),  # never answered, never recovered
            ("u3", "user", "complete", None, 3),  # sent after it, also unanswered
        ],
    )
    empty = conversation()

    migrate(AFTER)

    def parent(made: dict, key: str) -> str | None:
        found = Message.objects.get(id=made[key].id).parent_id
        keys = {m.id: k for k, m in made.items()}
        return keys[found] if found else None

    assert [parent(chain, k) for k in ("u1", "a1", "u2", "a2", "u3", "a3")] == [
        None,
        "u1",
        "a1",
        "u2",
        "a2",
        "u3",
    ]
    # The late reply still answers u4, and u5 follows it, as the page showed them in turn.
    assert parent(chain, "u4") == "a3"
    assert parent(chain, "a4") == "u4"
    assert parent(chain, "u5") == "a4"
    assert parent(chain, "a5") == "u5"
    leaf = Conversation.objects.get(id=every_status.id).current_leaf_id
    assert leaf == chain["a5"].id
    # Read by today's code, which needs every app's tables (attachments came later).
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    history = path_history(leaf_id=leaf, limit=50)
    assert [h.content for h in history] == [
        f"text of {k}" for k in ("u1", "a1", "u2", "a2", "u3", "a3", "u4", "a4", "u5", "a5")
    ]
    statuses = dict(Message.objects.filter(role="assistant").values_list("id", "status"))
    assert statuses[chain["a2"].id] == "stopped" and statuses[chain["a4"].id] == "interrupted"

    # A message with no reply at all: the one after it becomes its version, not its child.
    assert parent(tail, "u2") == "a1"
    assert parent(tail, "u3") == "a1"
    assert Conversation.objects.get(id=unanswered_end.id).current_leaf_id == tail["u3"].id
    assert Conversation.objects.get(id=empty.id).current_leaf_id is None


@pytest.mark.django_db(transaction=True)
def test_the_migration_goes_back_keeping_the_first_reply_of_each_message(
    alice: Any, persona: Any
) -> None:
    made = Conversation.objects.create(owner=alice, persona=persona)
    question = Message.objects.create(
        conversation=made, owner=alice, role="user", content="Q", client_id=None
    )
    first = Message.objects.create(
        conversation=made, role="assistant", content="first", parent=question
    )
    Message.objects.create(conversation=made, role="assistant", content="second", parent=question)
    apps = migrate(BEFORE)
    try:
        OldMessage = apps.get_model("conversations", "Message")
        replies = OldMessage.objects.filter(role="assistant")
        assert list(replies.values_list("id", "reply_to_id")) == [(first.id, question.id)]
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
