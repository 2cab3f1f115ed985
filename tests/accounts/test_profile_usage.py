"""The profile page shows what a user's replies cost: this period, and 30 days per persona."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import period_bounds, usage_for
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def reply(
    owner: Any,
    persona: Persona,
    *,
    days_ago: float = 0,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    content: str = "an answer",
) -> Message:
    chat = Conversation.objects.create(owner=owner, persona=persona)
    message_append(conversation=chat, role=Message.Role.USER, content="x" * 400)
    message = message_append(
        conversation=chat,
        role=Message.Role.ASSISTANT,
        content=content,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    # created_at is auto_now_add: age the row with an update, as time would.
    Message.objects.filter(pk=message.pk).update(
        created_at=timezone.now() - timedelta(days=days_ago)
    )
    return message


def profile_page(user: Any) -> str:
    client = Client()
    client.force_login(user)
    response = client.get("/accounts/profile/")
    assert response.status_code == 200
    return response.content.decode()


def usage_rows(html: str) -> list[tuple[str, str]]:
    table = html.split('id="usage-by-persona"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", body)


def test_profile_shows_todays_tokens_and_30_days_per_persona(
    alice: Any, bob: Any, persona: Persona, pirate: Persona, settings: Any
) -> None:
    settings.TOKEN_BUDGET_PERIOD = "day"
    reply(alice, persona, input_tokens=1200, output_tokens=300)  # today: 1500
    reply(alice, pirate, output_tokens=40)  # today: 40 (input unreported)
    reply(alice, pirate, content="y" * 10)  # today, no usage reported: ceil(10 / 4) = 3
    reply(alice, persona, days_ago=3, input_tokens=100, output_tokens=100)  # 30 days only
    reply(alice, persona, days_ago=45, input_tokens=9000, output_tokens=9000)  # neither
    reply(bob, persona, input_tokens=777_000, output_tokens=1)  # Bob's, never Alice's

    html = profile_page(alice)

    # Alice's own 400-character questions count for nothing: only replies are usage.
    assert re.search(r"Today \(since 00:00 UTC\): <strong>1543</strong> tokens", html)
    assert usage_rows(html) == [("Assistant", "1700"), ("Captain Redbeard", "43")]
    assert '<th scope="row">Total</th><td>1743</td>' in html
    assert "777" not in html
    tomorrow = timezone.now().date() + timedelta(days=1)
    assert f"Counting starts again {tomorrow:%a} {tomorrow.day} {tomorrow:%b}, 00:00 UTC" in html


def test_profile_counts_this_week_from_monday_and_this_month_from_the_1st(
    alice: Any, persona: Persona, settings: Any
) -> None:
    reply(alice, persona, output_tokens=10)
    reply(alice, persona, days_ago=8, output_tokens=1000)  # before this week's Monday

    settings.TOKEN_BUDGET_PERIOD = "week"
    html = profile_page(alice)
    assert re.search(r"This week \(since Monday 00:00 UTC\): <strong>10</strong> tokens", html)
    assert usage_rows(html) == [("Assistant", "1010")]

    settings.TOKEN_BUDGET_PERIOD = "month"
    assert "This month (since the 1st, 00:00 UTC): <strong>" in profile_page(alice)


def test_profile_without_replies_says_so(alice: Any) -> None:
    html = profile_page(alice)
    assert re.search(r"Today \(since 00:00 UTC\): <strong>0</strong> tokens", html)
    assert "No replies in the last 30 days." in html


def test_usage_is_one_grouped_query_however_many_replies(
    alice: Any, persona: Persona, pirate: Persona
) -> None:
    for i in range(30):
        reply(alice, pirate if i % 3 else persona, output_tokens=i, input_tokens=1)
    since = timezone.now() - timedelta(days=1)

    with CaptureQueriesContext(connection) as queries:
        usage = usage_for(user_id=alice.pk, since=since)

    assert len(queries) == 1
    assert usage.tokens == sum(range(30)) + 30
    assert [p.slug for p in usage.by_persona] == ["pirate", "assistant"]
    assert sum(p.tokens for p in usage.by_persona) == usage.tokens
    later = usage_for(user_id=alice.pk, since=since, until=since)
    assert later.tokens == 0 and later.by_persona == ()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-03-04T23:59:59+00:00", "2026-03-04", "2026-03-05"),
        # 00:30 in UTC+02:00 is still the day before in UTC.
        ("day", "2026-03-05T00:30:00+02:00", "2026-03-04", "2026-03-05"),
        ("week", "2026-03-04T12:00:00+00:00", "2026-03-02", "2026-03-09"),  # a Wednesday
        ("week", "2026-03-08T23:00:00+00:00", "2026-03-02", "2026-03-09"),  # Sunday night
        ("week", "2026-03-09T00:00:00+00:00", "2026-03-09", "2026-03-16"),  # Monday, 00:00
        ("month", "2026-02-28T20:00:00+00:00", "2026-02-01", "2026-03-01"),
        ("month", "2026-12-31T23:59:00+00:00", "2026-12-01", "2027-01-01"),
    ],
)
def test_periods_start_at_midnight_utc_weeks_on_monday(
    period: Any, now: str, start: str, end: str
) -> None:
    assert period_bounds(period, datetime.fromisoformat(now)) == (
        datetime.fromisoformat(start).replace(tzinfo=UTC),
        datetime.fromisoformat(end).replace(tzinfo=UTC),
    )


def test_an_unknown_period_stops_the_server_at_startup() -> None:
    env = {**os.environ, "DJANGO_DEBUG": "true", "TOKEN_BUDGET_PERIOD": "fortnight"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    started = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "ImproperlyConfigured: TOKEN_BUDGET_PERIOD='fortnight' is not one of day, week" in (
        started.stderr
    )
    env["TOKEN_BUDGET_PERIOD"] = "Week"  # case and spaces are forgiven
    assert (
        subprocess.run(
            [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True
        ).returncode
        == 0
    )


def test_a_display_name_loses_bidi_overrides_and_controls(alice: Any) -> None:
    """The display name goes into every prompt and, through the demo, into replies: a
    right-to-left override in it turned the rest of a reply's paragraph around, and a
    control byte reached `manage.py chat`'s terminal."""
    client = Client()
    client.force_login(alice)

    saved = client.post(
        "/accounts/profile/", {"display_name": "Bob\u202eevil\u2066\u0007 Jones", "about": ""}
    )
    invisible = client.post("/accounts/profile/", {"display_name": "\u200b\u2067", "about": ""})

    assert saved.status_code == 302
    assert invisible.status_code == 200  # the form again, with its error
    assert "must show" in invisible.content.decode()
    alice.profile.refresh_from_db()
    assert alice.profile.display_name == "Bobevil Jones"
