"""The JSON API and the profile page under access and quotas: what a user may see and use."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from accounts.models import UserTokenBudget
from conversations.models import Conversation, TokenUsage
from personas.models import Persona

pytestmark = pytest.mark.django_db


@pytest.fixture
def legal(alice: Any, persona: Persona) -> Persona:
    group = Group.objects.create(name="legal")
    alice.groups.add(group)
    limited = Persona.objects.create(slug="legal", name="Counsel", system_prompt="x", order=5)
    limited.groups.add(group)
    return limited


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def today() -> Any:
    return timezone.now().astimezone(UTC).date()


def test_personas_lists_only_those_the_user_may_use(alice, bob, persona, pirate, legal):
    Persona.objects.create(slug="retired", name="Retired", system_prompt="x", is_active=False)
    assert [p["slug"] for p in client_for(alice).get("/api/personas/").json()] == [
        "assistant",
        "pirate",
        "legal",
    ]
    assert [p["slug"] for p in client_for(bob).get("/api/personas/").json()] == [
        "assistant",
        "pirate",
    ]


def test_starting_a_chat_with_a_hidden_persona_is_a_404_like_a_missing_one(
    alice, bob, persona, legal
):
    bobs = client_for(bob)
    hidden = bobs.post("/api/conversations/", {"persona": "legal"}, "application/json")
    missing = bobs.post("/api/conversations/", {"persona": "nope"}, "application/json")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert hidden.json()["error"]["message"] == "No persona 'legal'."
    assert not Conversation.objects.exists()

    started = client_for(alice).post(
        "/api/conversations/", {"persona": "legal"}, "application/json"
    )
    assert started.status_code == 201 and started.json()["persona"] == "legal"


def test_a_default_persona_limited_to_a_group_is_not_bobs_default(alice, bob, legal, persona):
    Persona.objects.filter(pk=persona.pk).update(is_default=False)
    Persona.objects.filter(pk=legal.pk).update(is_default=True)
    bobs = client_for(bob).post("/api/conversations/", {}, "application/json")
    alices = client_for(alice).post("/api/conversations/", {}, "application/json")
    assert (bobs.json()["persona"], alices.json()["persona"]) == ("assistant", "legal")


def test_usage_answers_the_contract(alice, bob, persona, pirate, settings):
    settings.TOKEN_BUDGET = 5000
    settings.TOKEN_BUDGET_PERIOD = "day"
    TokenUsage.objects.create(user=alice, persona=persona, day=today(), tokens=1200)
    TokenUsage.objects.create(user=alice, persona=pirate, day=today(), tokens=1300)
    TokenUsage.objects.create(user=alice, persona=pirate, day=today() - timedelta(days=1), tokens=9)
    TokenUsage.objects.create(user=bob, persona=pirate, day=today(), tokens=777)

    response = client_for(alice).get("/api/usage/")

    assert response.status_code == 200
    body = response.json()
    start = datetime.combine(today(), datetime.min.time(), tzinfo=UTC)
    assert body == {
        "period": "day",
        "period_start": start.isoformat(),
        "resets_at": (start + timedelta(days=1)).isoformat(),
        "used_tokens": 2500,
        "limit_tokens": 5000,
        "by_persona": [
            {"persona": "pirate", "tokens": 1300},
            {"persona": "assistant", "tokens": 1200},
        ],
    }


def test_usage_without_a_limit_is_null_and_weeks_start_on_monday(alice, persona, settings):
    settings.TOKEN_BUDGET = None
    settings.TOKEN_BUDGET_PERIOD = "week"
    monday = today() - timedelta(days=today().weekday())
    TokenUsage.objects.create(user=alice, persona=persona, day=monday, tokens=40)
    TokenUsage.objects.create(user=alice, persona=persona, day=monday - timedelta(days=1), tokens=1)

    body = client_for(alice).get("/api/usage/").json()

    assert body["limit_tokens"] is None
    assert (body["period"], body["period_start"][:10], body["used_tokens"]) == (
        "week",
        monday.isoformat(),
        40,
    )
    assert body["resets_at"][:10] == (monday + timedelta(days=7)).isoformat()


def test_usage_needs_a_signed_in_user_and_only_get(alice):
    assert Client().get("/api/usage/").status_code == 401
    assert client_for(alice).post("/api/usage/").status_code == 405


def test_profile_shows_the_budget_as_a_bar_with_when_it_renews(alice, persona, settings):
    settings.TOKEN_BUDGET = 10_000
    UserTokenBudget.objects.create(user=alice, tokens=4000)
    TokenUsage.objects.create(user=alice, persona=persona, day=today(), tokens=1000)

    html = client_for(alice).get("/accounts/profile/").content.decode()

    assert re.search(r"<strong>1000</strong> of 4000 tokens used this day", html)
    assert '<progress id="usage-progress" value="1000" max="4000">' in html
    assert "(3000 left)" in html
    assert re.search(r"Resets \w{3} \d+ \w{3}, 00:00 UTC \(in (\d+ h )?\d+ min\)", html)

    TokenUsage.objects.filter(user=alice).update(tokens=4500)
    html = client_for(alice).get("/accounts/profile/").content.decode()
    assert "used up" in html and 'value="4000" max="4000"' in html

    UserTokenBudget.objects.filter(user=alice).update(tokens=None)
    html = client_for(alice).get("/accounts/profile/").content.decode()
    assert "you have no limit" in html and "<progress" not in html
