"""Walking the active path costs one statement, however long the conversation."""

from __future__ import annotations

import uuid
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
