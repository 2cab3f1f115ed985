"""Operators: who may use which persona and how much (admin), and who used what (the usage
report page, its CSV, and `manage.py usage_report`)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.forms import MultiWidget
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import GroupTokenBudget, UserTokenBudget
from conversations.models import TokenUsage
from conversations.reports import usage_report
from conversations.services import budget_for
from personas.models import Persona

pytestmark = pytest.mark.django_db

User = get_user_model()
REPORT = "/admin/conversations/tokenusage/"


@pytest.fixture
def staff(alice: Any) -> Client:
    admin_user = User.objects.create_superuser("root", "root@example.org", None)
    client = Client()
    client.force_login(admin_user)
    return client


def today() -> Any:
    return timezone.now().astimezone(UTC).date()


@pytest.fixture
def usage(alice: Any, bob: Any, persona: Persona, pirate: Persona) -> None:
    """Alice used 1500 today and 20 on Monday's side of this week; Bob 300 today; and a
    counter from 40 days ago that no period this month reaches."""
    TokenUsage.objects.create(user=alice, persona=persona, day=today(), tokens=1000)
    TokenUsage.objects.create(user=alice, persona=pirate, day=today(), tokens=500)
    TokenUsage.objects.create(user=bob, persona=pirate, day=today(), tokens=300)
    TokenUsage.objects.create(user=bob, persona=pirate, day=today() - timedelta(days=40), tokens=9)


def test_the_report_has_rows_per_user_persona_and_day_and_the_top_users(usage, alice, bob):
    report = usage_report(period="day")
    assert [(r.username, r.persona, r.tokens) for r in report.rows] == [
        ("alice", "assistant", 1000),
        ("alice", "pirate", 500),
        ("bob", "pirate", 300),
    ]
    assert [(u.username, u.tokens) for u in report.top_users] == [("alice", 1500), ("bob", 300)]
    assert report.total == 1800
    assert report.start.date() == today() and report.end.date() == today() + timedelta(days=1)
    # The report and the budget read the same counters.
    assert budget_for(user_id=alice.pk).used_tokens == 1500
    assert usage_report(period="month").total == 1800
    assert usage_report(period="day", top=1).top_users[0].username == "alice"


def test_the_admin_page_shows_the_period_and_offers_the_csv(staff, usage):
    page = staff.get(REPORT, {"period": "day"})
    assert page.status_code == 200
    html = page.content.decode()
    assert '<strong id="usage-total">1800</strong>' in html
    assert "Top users this day" in html
    top = html.split('id="usage-top-users"', 1)[1].split("</table>", 1)[0]
    assert top.index("alice") < top.index("bob")
    assert f"<td>{today():%Y-%m-%d}</td><td>alice</td><td>assistant</td><td>1000</td>" in html
    assert "?period=day&amp;format=csv" in html

    download = staff.get(REPORT, {"period": "week", "format": "csv"})
    assert download.status_code == 200
    assert download["Content-Type"].startswith("text/csv")
    assert "attachment" in download["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(download.content.decode())))
    assert rows[0] == ["day", "user", "persona", "tokens"]
    assert sorted(rows[1:]) == [
        [today().isoformat(), "alice", "assistant", "1000"],
        [today().isoformat(), "alice", "pirate", "500"],
        [today().isoformat(), "bob", "pirate", "300"],
    ]
    # A period nobody knows falls back to the configured one rather than failing.
    assert staff.get(REPORT, {"period": "fortnight"}).status_code == 200


def test_a_username_cannot_become_a_spreadsheet_formula(staff, persona):
    sneaky = User.objects.create_user("=HYPERLINK(1)", password="x")
    TokenUsage.objects.create(user=sneaky, persona=persona, day=today(), tokens=1)
    rows = list(csv.reader(io.StringIO(staff.get(REPORT, {"format": "csv"}).content.decode())))
    assert rows[1][1] == "'=HYPERLINK(1)"


def test_the_report_is_for_staff_only(alice, usage):
    client = Client()
    client.force_login(alice)
    for query in ({}, {"format": "csv"}):
        response = client.get(REPORT, query)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Client().get(REPORT).status_code == 302


def test_the_command_prints_the_same_figures_and_csv(usage, capsys):
    out = io.StringIO()
    call_command("usage_report", "--period", "day", stdout=out)
    text = out.getvalue()
    assert "Token usage this day" in text and "1800 tokens" in text
    top = text.split("Top users:", 1)[1]
    assert top.index("alice") < top.index("bob")
    assert "1500" in top

    out = io.StringIO()
    call_command("usage_report", "--period", "month", "--csv", stdout=out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["day", "user", "persona", "tokens"]
    assert len(rows) == 4  # the 40-day-old counter is in no period this month

    with pytest.raises(Exception, match="invalid choice"):
        call_command("usage_report", "--period", "year")


# --- admin: groups on personas, budget overrides -------------------------------------------------


def change_form_data(response: Any) -> dict[str, Any]:
    """What the browser would post back from an admin change page, unchanged."""
    data: dict[str, Any] = {}
    forms = [response.context["adminform"].form]
    for formset in response.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        forms.append(management)
        forms.extend(formset.formset.forms)
    for form in forms:
        for name, field in form.fields.items():
            bound = form[name]
            value = bound.value()
            if field.disabled:
                continue
            if isinstance(field.widget, MultiWidget):
                for i, part in enumerate(field.widget.decompress(value) or []):
                    data[f"{bound.html_name}_{i}"] = "" if part is None else str(part)
            elif isinstance(value, list | tuple):
                data[bound.html_name] = [str(v) for v in value]
            elif value is True:
                data[bound.html_name] = "on"
            elif value is not None and value is not False:
                data[bound.html_name] = str(value)
    return data


def test_a_persona_is_limited_to_groups_in_its_form(staff, persona, pirate):
    legal = Group.objects.create(name="legal")
    url = reverse("admin:personas_persona_change", args=[pirate.pk])
    page = staff.get(url)
    assert 'id="id_groups"' in page.content.decode()
    assert "SelectFilter" in page.content.decode()  # the two-box picker

    saved = staff.post(url, {**change_form_data(page), "groups": [legal.pk]})

    assert saved.status_code == 302
    assert list(pirate.groups.values_list("name", flat=True)) == ["legal"]
    listing = staff.get(reverse("admin:personas_persona_changelist")).content.decode()
    assert "legal" in listing and "everyone" in listing


def test_a_duplicated_persona_keeps_its_groups(staff, pirate):
    legal = Group.objects.create(name="legal")
    pirate.groups.add(legal)
    staff.post(
        reverse("admin:personas_persona_changelist"),
        {"action": "duplicate", "_selected_action": [pirate.pk]},
    )
    copy = Persona.objects.get(slug="pirate-copy")
    assert list(copy.groups.all()) == [legal]


def test_a_group_budget_is_set_in_the_group_admin(staff, alice):
    group = Group.objects.create(name="interns")
    alice.groups.add(group)
    url = reverse("admin:auth_group_change", args=[group.pk])
    page = staff.get(url)
    data = change_form_data(page)
    data["budget-0-tokens"] = "2500"
    assert staff.post(url, data).status_code == 302
    assert GroupTokenBudget.objects.get(group=group).tokens == 2500
    assert budget_for(user_id=alice.pk).limit_tokens == 2500

    # Neither a number nor "no limit": said so, nothing saved.
    page = staff.get(url)
    data = change_form_data(page)
    data["budget-0-tokens"] = ""
    refused = staff.post(url, data)
    assert refused.status_code == 200
    assert "Give a number of tokens, or tick No limit." in refused.content.decode()
    data["budget-0-no_limit"] = "on"
    assert staff.post(url, data).status_code == 302
    assert GroupTokenBudget.objects.get(group=group).tokens is None
    assert "no limit" in staff.get(reverse("admin:auth_group_changelist")).content.decode()


def test_a_user_override_is_set_on_the_user_admin(staff, alice, settings):
    settings.TOKEN_BUDGET = 100
    url = reverse("admin:auth_user_change", args=[alice.pk])
    page = staff.get(url)
    assert "overrides the user" in page.content.decode()
    data = change_form_data(page)
    data["token_budget-0-no_limit"] = "on"  # an unlimited override, with no number at all

    saved = staff.post(url, data)

    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert UserTokenBudget.objects.get(user=alice).tokens is None
    assert budget_for(user_id=alice.pk).limit_tokens is None
