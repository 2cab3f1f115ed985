"""Hypothesis throws random frames at the consumer: it never crashes, saves or leaks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conversations.models import Conversation, Message
from tests.conftest import pool_checked_out, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
types = st.sampled_from(["chat.send", "chat.stop", "chat.resume", "chat.other", "", None, 7])
# Ids are never valid UUIDs here, so no frame can be a real request that saves a message.
not_uuids = st.one_of(st.none(), st.integers(), st.text(max_size=40), st.just("not-a-uuid"))
frames = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": types},
        optional={
            "conversation_id": not_uuids,
            "client_id": not_uuids,
            "persona": json_values,
            "content": st.one_of(json_values, st.integers(16_001, 400_000).map(lambda n: "x" * n)),
            "after_seq": json_values,
        },
    ).map(json.dumps),
    st.integers(1, 20_000).map(lambda depth: "[" * depth + "]" * depth),
    st.text(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=64),
)


async def throw(cookie: str, batch: list[Any]) -> list[dict[str, Any]]:
    from chatproject.asgi import application

    communicator = WebsocketCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"host", b"localhost"),
            (b"origin", b"http://localhost"),
            (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode()),
        ],
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    answers = []
    try:
        for frame in batch:
            if isinstance(frame, bytes):
                await communicator.send_to(bytes_data=frame)
            else:
                await communicator.send_to(text_data=frame)
            answers.append(json.loads(await communicator.receive_from(10)))
        # Still alive and answering after all that.
        await communicator.send_to(text_data=json.dumps({"type": "chat.ping"}))
        answers.append(json.loads(await communicator.receive_from(10)))
    finally:
        await communicator.disconnect()
    return answers


@pytest.fixture
def cookie(alice, persona):
    value = session_cookie(alice)
    connection.close()
    return value


@given(batch=st.lists(frames, min_size=1, max_size=8))
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_frames_never_crash_save_or_leak(cookie, batch):
    answers = asyncio.run(throw(cookie, batch))

    assert len(answers) == len(batch) + 1
    for answer in answers:
        assert answer["type"] in {"chat.error", "chat.idle"}, answer
        if answer["type"] == "chat.error":
            assert answer["code"] in {"invalid", "too_large", "not_found"}
    assert Conversation.objects.count() == 0
    assert Message.objects.count() == 0
    connection.close()
    assert pool_checked_out() == 0
