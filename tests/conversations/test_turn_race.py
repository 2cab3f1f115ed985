"""Two sends of one client_id at once: the one that commits second answers as a re-send."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conversations import services
from conversations.models import Conversation, Message
from tests.locks import behind_a_lock

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_send_racing_its_twin_gets_the_twins_message_and_leaves_no_conversation(
    alice: Any, persona: Any
) -> None:
    client_id = uuid.uuid4()

    def send() -> Any:
        return services.turn_begin(
            user_id=alice.id,
            conversation_id=None,
            persona_slug=None,
            content="Hello",
            client_id=client_id,
            history_limit=10,
        )

    # The twin's message is inserted, not yet committed, while the second send runs: the
    # second insert waits on the twin's uncommitted row.
    race = behind_a_lock(send, send)
    first, second = race.held, race.answer

    assert second.duplicate
    assert second.user_message_id == first.user_message_id
    assert second.conversation_id == first.conversation_id
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

    def save() -> Any:
        return services.reply_save(
            message_id=opened.message_id,
            conversation_id=opened.conversation_id,
            user_message_id=opened.user_message_id,
            content="Hi.",
            status="complete",
            input_tokens=1,
            output_tokens=1,
            error="",
        )

    def follow_up() -> Any:
        try:
            return services.turn_begin(
                user_id=alice.id,
                conversation_id=opened.conversation_id,
                persona_slug=None,
                content="And then?",
                client_id=uuid.uuid4(),
                history_limit=10,
            )
        except Exception as exc:  # the assertion below names it
            return exc

    race = behind_a_lock(save, follow_up)
    assert race.waited  # the send waits for the save to commit

    sent = race.answer
    assert not isinstance(sent, Exception), sent
    assert sent.user_parent_id == opened.message_id
    assert [item.content for item in sent.history] == ["Hello", "Hi."]
    conversation = Conversation.objects.get(id=opened.conversation_id)
    assert conversation.current_leaf_id == sent.user_message_id
