"""Who may chat with which persona, and how much: over the socket, through the real turn.

Alice is in the "legal" group and may chat with the legal persona; Bob is not, so for him it
does not exist. A budget of tokens per period stops new turns, never a reply under way.
"""

from __future__ import annotations

import math
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import AsyncClient, Client

from accounts.models import GroupTokenBudget, UserTokenBudget
from conversations.db import db_call
from conversations.models import Conversation, Message, TokenUsage
from conversations.services import budget_for, message_append, reply_save
from personas.models import Persona
from tests.conftest import Socket, release_shared_thread

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def legal(alice: Any) -> Persona:
    group = Group.objects.create(name="legal")
    alice.groups.add(group)
    persona = Persona.objects.create(
        slug="legal", name="Counsel", system_prompt="You review contracts.", avatar="⚖️"
    )
    persona.groups.add(group)
    return persona


def message_rows() -> list[tuple[str, str]]:
    return list(Message.objects.order_by("created_at").values_list("role", "content"))


def used_tokens(user: Any) -> int:
    return budget_for(user_id=user.pk).used_tokens


def seconds_to_midnight_utc() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


async def turn(socket: Socket, content: str, **send: Any) -> tuple[dict, dict]:
    await socket.send_message(content, **send)
    frames = await socket.receive_until("chat.done")
    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    return accepted, frames[-1]


async def refusal(socket: Socket) -> dict[str, Any]:
    return await socket.receive_type("chat.error")


# --- personas limited to groups -------------------------------------------------------------


async def test_a_persona_outside_ones_groups_is_not_found_exactly_like_a_missing_one(
    ws, bob, persona, legal, fast_demo
):
    socket = await ws(bob)
    await socket.send_message("Review my lease", persona="legal")
    hidden = await refusal(socket)
    await socket.send_message("Review my lease", persona="nonexistent")
    missing = await refusal(socket)

    assert hidden["code"] == missing["code"] == "not_found"
    assert hidden["message"] == missing["message"].replace("nonexistent", "legal")
    assert set(hidden) == set(missing)
    assert await db_call(message_rows)() == []
    assert await db_call(Conversation.objects.count)() == 0


async def test_a_member_of_the_group_can_chat_with_it(ws, alice, legal, fast_demo):
    socket = await ws(alice)
    accepted, done = await turn(socket, "Review my lease", persona="legal")
    assert accepted["persona"] == "legal"
    assert done["status"] == "complete" and done["content"]


def _read_back(user: Any, conversation_id: str) -> tuple[int, int, int]:
    client = Client()
    client.force_login(user)
    detail = client.get(f"/api/conversations/{conversation_id}/")
    export = client.get(f"/api/conversations/{conversation_id}/export/?format=md")
    listed = client.get("/api/conversations/")
    assert any(c["id"] == conversation_id for c in listed.json())
    assert len(detail.json()["messages"]) == 2
    return detail.status_code, export.status_code, listed.status_code


async def test_leaving_the_group_makes_an_existing_chat_read_only(ws, alice, legal, fast_demo):
    socket = await ws(alice)
    accepted, _ = await turn(socket, "Review my lease", persona="legal")
    conversation_id = accepted["conversation_id"]
    await db_call(lambda: alice.groups.clear())()
    before = await db_call(message_rows)()

    await socket.send_message("And clause 4?", conversation_id=conversation_id)
    sent = await refusal(socket)
    await socket.regenerate(conversation_id, accepted["message_id"])
    regenerated = await refusal(socket)

    for frame in (sent, regenerated):
        assert frame["code"] == "forbidden"
        assert frame["conversation_id"] == conversation_id
        assert "Counsel" in frame["message"] and "new chat" in frame["message"].lower()
    assert await db_call(message_rows)() == before
    # Still hers to read and to take away.
    assert await db_call(_read_back)(alice, conversation_id) == (200, 200, 200)
    # And a new chat with it is as if it never existed.
    await socket.send_message("Again", persona="legal")
    assert (await refusal(socket))["code"] == "not_found"


# --- token budgets ----------------------------------------------------------------------------


async def test_a_used_up_budget_refuses_new_turns_until_the_next_period(
    ws, alice, persona, fast_demo, settings
):
    socket = await ws(alice)
    first, _ = await turn(socket, "Hello")
    conversation_id = first["conversation_id"]
    per_reply = await db_call(used_tokens)(alice)
    assert per_reply > 1
    # Room for one more turn, not two.
    settings.TOKEN_BUDGET = per_reply + 1
    _, done = await turn(socket, "Once more", conversation_id=conversation_id)
    assert done["status"] == "complete"
    assert await db_call(used_tokens)(alice) > per_reply + 1
    before = await db_call(message_rows)()

    await socket.send_message("A third?", conversation_id=conversation_id)
    in_chat = await refusal(socket)
    await socket.send_message("A new chat then")
    new_chat = await refusal(socket)
    await socket.regenerate(conversation_id, first["message_id"])
    regenerated = await refusal(socket)

    expected_wait = seconds_to_midnight_utc()
    for frame in (in_chat, new_chat, regenerated):
        assert frame["code"] == "quota_exceeded"
        assert abs(frame["retry_after"] - expected_wait) < 5
        assert "00:00 UTC" in frame["message"]
    assert await db_call(message_rows)() == before
    assert await db_call(Conversation.objects.count)() == 1


async def test_a_reply_that_started_finishes_even_past_the_budget(
    ws, alice, persona, fast_demo, settings
):
    settings.TOKEN_BUDGET = 1
    socket = await ws(alice)
    _, done = await turn(socket, "Tell me a long story")
    assert done["status"] == "complete"
    assert len(done["content"].split()) == 30  # not cut short
    assert await db_call(used_tokens)(alice) > 1
    await socket.send_message("More?")
    assert (await refusal(socket))["code"] == "quota_exceeded"


def _budget_setup(alice: Any, groups: dict[str, int | None], own: Any = "none") -> None:
    for name, tokens in groups.items():
        group = Group.objects.create(name=name)
        GroupTokenBudget.objects.create(group=group, tokens=tokens)
        alice.groups.add(group)
    if own != "none":
        UserTokenBudget.objects.create(user=alice, tokens=own)


def _limit(alice: Any) -> int | None:
    return budget_for(user_id=alice.pk).limit_tokens


async def test_overrides_a_user_beats_groups_the_most_generous_group_wins_unlimited_wins_all(
    alice, bob, settings
):
    settings.TOKEN_BUDGET = 100
    assert await db_call(_limit)(alice) == 100  # the default
    await db_call(_budget_setup)(alice, {"interns": 50, "staff": 5000})
    assert await db_call(_limit)(alice) == 5000  # the most generous group, even above default
    await db_call(_budget_setup)(alice, {"research": None})
    assert await db_call(_limit)(alice) is None  # a group with no limit
    await db_call(_budget_setup)(alice, {}, own=10)
    assert await db_call(_limit)(alice) == 10  # her own override, even below her groups
    await db_call(lambda: UserTokenBudget.objects.filter(user=alice).update(tokens=None))()
    assert await db_call(_limit)(alice) is None  # her own "no limit"
    assert await db_call(_limit)(bob) == 100  # nobody else's overrides are his


async def test_a_user_override_lets_a_user_chat_past_the_default(
    ws, alice, persona, fast_demo, settings
):
    settings.TOKEN_BUDGET = 0
    socket = await ws(alice)
    await socket.send_message("Hello")
    assert (await refusal(socket))["code"] == "quota_exceeded"

    await db_call(_budget_setup)(alice, {"small": 0}, own=100_000)
    _, done = await turn(socket, "Hello")
    assert done["status"] == "complete"


async def test_http_post_message_answers_429_with_whole_seconds(alice, persona, settings):
    settings.TOKEN_BUDGET = 0
    chat = await db_call(Conversation.objects.create)(owner=alice, persona=persona)
    client = AsyncClient()
    await client.aforce_login(alice)

    response = await client.post(
        f"/api/conversations/{chat.id}/messages/",
        data={"content": "Hello"},
        content_type="application/json",
    )

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert abs(int(retry_after) - math.ceil(seconds_to_midnight_utc())) <= 5
    assert await db_call(Message.objects.count)() == 0
    await release_shared_thread()


# --- counting -----------------------------------------------------------------------------


def _two_questions(alice: Any, persona: Persona) -> list[tuple[uuid.UUID, uuid.UUID]]:
    found = []
    for _ in range(2):
        chat = Conversation.objects.create(owner=alice, persona=persona)
        question = message_append(conversation=chat, role=Message.Role.USER, content="Hi")
        found.append((chat.id, question.id))
    return found


def _save_together(questions: list[tuple[uuid.UUID, uuid.UUID]], tokens: list[int]) -> None:
    start = threading.Barrier(len(questions))
    failures: list[BaseException] = []

    def save(conversation_id: uuid.UUID, question_id: uuid.UUID, output: int) -> None:
        try:
            start.wait(5)
            reply_save(
                message_id=uuid.uuid4(),
                conversation_id=conversation_id,
                user_message_id=question_id,
                content="answer",
                status="complete",
                input_tokens=7,
                output_tokens=output,
                error="",
            )
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=save, args=(c, q, t))
        for (c, q), t in zip(questions, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures


async def test_two_replies_saved_at_once_are_both_counted(alice, persona):
    questions = await db_call(_two_questions)(alice, persona)
    await db_call(_save_together)(questions, [100, 250])
    assert await db_call(used_tokens)(alice) == (7 + 100) + (7 + 250)
    counters = await db_call(lambda: list(TokenUsage.objects.values_list("tokens", flat=True)))()
    assert counters == [364]  # one row per user, persona and day


async def test_a_reply_whose_chat_was_deleted_while_it_streamed_still_counts(
    ws, alice, persona, settings
):
    """Deleting the chat mid-reply must not make the reply free: the user read its words,
    and the model was paid for them (an outside attack took replies that way, with
    nothing counted, as often as it liked)."""
    settings.DEMO_TOKEN_DELAY_MS = 40
    socket = await ws(alice)
    await socket.send_message("Tell me a long story " + "about the sea " * 200)
    accepted = await socket.receive_type("chat.accepted")
    await socket.receive_type("chat.delta")
    await db_call(Conversation.objects.filter(id=accepted["conversation_id"]).delete)()
    gone = await socket.receive_type("chat.error")

    assert gone["code"] == "not_found"
    used = await db_call(used_tokens)(alice)
    # The prompt alone is hundreds of tokens; the reply had begun.
    assert used > 600
    by_persona = await db_call(lambda: list(TokenUsage.objects.values_list("persona__slug")))()
    assert by_persona == [(persona.slug,)]


async def test_a_stopped_reply_counts_its_prompt_as_well_as_its_words(ws, alice, persona, settings):
    """A provider reports its usage at the end, so a stopped reply has none: it is counted as
    characters / 4, of the prompt it was sent as well as of its words (the prompt alone was
    free, and a stop right before the end took a long reply for its words only)."""
    settings.DEMO_TOKEN_DELAY_MS = 40
    socket = await ws(alice)
    question = "Summarise this contract clause by clause. " * 100  # 4,200 characters
    await socket.send_message(question)
    accepted = await socket.receive_type("chat.accepted")
    await socket.receive_type("chat.delta")
    await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    done = await socket.receive_type("chat.done")

    assert done["status"] == "stopped"
    assert done["usage"] == {"input_tokens": None, "output_tokens": None}
    assert await db_call(used_tokens)(alice) >= math.ceil(len(question) / 4)
