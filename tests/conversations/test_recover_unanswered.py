"""`recover_streams` closes user messages whose turn was cut off before its reply started,
and leaves alone every message whose reply may still come."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.replies import replylog
from conversations.replies.recovery import UNANSWERED_REASON
from conversations.services import reply_id_for
from personas.models import Persona

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reply_log(settings: Any) -> Iterator[redis.Redis]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings.REDIS_URL = url
    yield client
    client.flushdb()


def user_message(owner: Any, persona: Persona, text: str, *, age: timedelta) -> Message:
    chat = Conversation.objects.create(owner=owner, persona=persona, title=text)
    message = Message.objects.create(
        conversation=chat,
        owner=owner,
        role=Message.Role.USER,
        content=text,
        client_id=uuid.uuid4(),
    )
    Message.objects.filter(id=message.id).update(created_at=timezone.now() - age)
    return message


def answer(message: Message) -> None:
    Message.objects.create(
        conversation_id=message.conversation_id,
        role=Message.Role.ASSISTANT,
        content="Here you go.",
        parent=message,
    )


def generating(log: redis.Redis, message: Message) -> None:
    """What a live worker keeps in the reply log while it streams this message's reply."""
    meta = replylog.GenerationMeta(
        conversation_id=str(message.conversation_id),
        message_id=str(reply_id_for(message.id)),
        user_message_id=str(message.id),
        client_id=str(message.client_id),
        user_id=message.conversation.owner_id,
        worker="elsewhere:1",
        started=time.time() - 3600,
    )
    log.set(replylog.gen_key(message.conversation_id), meta.dumps())
    log.set(replylog.heartbeat_key(meta.message_id), "1", ex=60)


def recover(*args: str) -> str:
    out = StringIO()
    call_command("recover_streams", *args, stdout=out)
    return out.getvalue()


def shown(owner: Any, message: Message) -> list[tuple[str, str, str, str | None]]:
    """The conversation as the user's page loads it."""
    client = Client()
    client.force_login(owner)
    body = client.get(f"/api/conversations/{message.conversation_id}/").json()
    return [(m["role"], m["status"], m["content"], m["error"]) for m in body["messages"]]


def test_an_unanswered_message_gets_an_interrupted_reply(reply_log, alice, persona):
    hour = timedelta(hours=1)
    orphan = user_message(alice, persona, "Cut off", age=hour)
    answered = user_message(alice, persona, "Answered", age=hour)
    answer(answered)
    starting = user_message(alice, persona, "Just sent", age=timedelta(seconds=5))
    streaming = user_message(alice, persona, "Still streaming", age=hour)
    generating(reply_log, streaming)
    touched = Conversation.objects.get(id=orphan.conversation_id).updated_at

    listed = recover("--dry-run")

    assert f"would close  reply {reply_id_for(orphan.id)}" in listed
    assert "recover_streams: would recover 1, failed 0" in listed
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 1

    done = recover()

    assert "recover_streams: recovered 1, failed 0" in done
    assert shown(alice, orphan) == [
        ("user", "complete", "Cut off", None),
        ("assistant", "interrupted", "", UNANSWERED_REASON),
    ]
    for left_alone in (starting, streaming):
        assert shown(alice, left_alone) == [("user", "complete", left_alone.content, None)]
    assert len(shown(alice, answered)) == 2
    # A reply that never came is no activity: the chat keeps its place in the list.
    assert Conversation.objects.get(id=orphan.conversation_id).updated_at == touched
    assert "recovered 0" in recover()


def test_without_redis_an_age_must_be_given(settings, alice, persona):
    settings.REDIS_URL = ""
    orphan = user_message(alice, persona, "Cut off", age=timedelta(hours=2))

    with pytest.raises(CommandError, match="--older-than"):
        recover()
    kept = recover("--older-than", "3h")
    closed = recover("--older-than", "1h")

    assert "recovered 0" in kept
    assert "recovered 1" in closed
    assert shown(alice, orphan)[-1][:2] == ("assistant", "interrupted")
