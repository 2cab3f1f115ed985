"""Which limit applies to a user, and what counts against it (the services, directly)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group

from accounts.models import GroupTokenBudget, UserTokenBudget
from conversations import services
from conversations.errors import QuotaExceeded
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def limit_of(user: Any) -> int | None:
    return services.budget_for(user_id=user.id).limit_tokens


def group(name: str, tokens: int | None, *members: Any) -> Group:
    made = Group.objects.create(name=name)
    GroupTokenBudget.objects.create(group=made, tokens=tokens)
    for member in members:
        member.groups.add(made)
    return made


def test_a_user_override_wins_else_the_most_generous_group_else_the_default(
    alice: Any, bob: Any, settings: Any
) -> None:
    settings.TOKEN_BUDGET = 1000
    assert limit_of(alice) == 1000
    group("interns", 200, alice)
    assert limit_of(alice) == 200  # a group's budget replaces the default, up or down
    group("legal", 5000, alice)
    assert limit_of(alice) == 5000
    group("research", None, alice)
    assert limit_of(alice) is None  # a group with no limit is the most generous
    UserTokenBudget.objects.create(user=alice, tokens=50)
    assert limit_of(alice) == 50
    UserTokenBudget.objects.filter(user=alice).update(tokens=None)
    assert limit_of(alice) is None
    assert limit_of(bob) == 1000
    settings.TOKEN_BUDGET = None
    assert limit_of(bob) is None


def save_reply(owner: Any, persona: Any, **tokens: Any) -> None:
    chat = Conversation.objects.create(owner=owner, persona=persona)
    question = Message.objects.create(conversation=chat, owner=owner, role="user", content="Q")
    services.reply_save(
        message_id=uuid.uuid4(),
        conversation_id=chat.id,
        user_message_id=question.id,
        content=tokens.pop("content", ""),
        status="complete",
        error="",
        **tokens,
    )


def test_saved_replies_count_their_usage_or_characters_over_four(
    alice: Any, bob: Any, persona: Any, settings: Any
) -> None:
    settings.TOKEN_BUDGET = 100
    save_reply(alice, persona, input_tokens=30, output_tokens=12)
    save_reply(alice, persona, input_tokens=None, output_tokens=None, content="x" * 41)
    save_reply(bob, persona, input_tokens=500, output_tokens=500)
    assert services.budget_for(user_id=alice.id).used_tokens == 42 + 11
    services.budget_check(user_id=alice.id)  # 53 of 100: allowed
    save_reply(alice, persona, input_tokens=40, output_tokens=7)
    with pytest.raises(QuotaExceeded) as refused:
        services.budget_check(user_id=alice.id)
    assert 0 < refused.value.fields["retry_after"] <= 86_400
    assert services.usage_by_persona(
        user_id=alice.id, since=services.budget_for(user_id=alice.id).period_start
    ) == [(persona.slug, 100)]
