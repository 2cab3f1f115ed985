"""The page under access and quotas: a chat whose persona is no longer the user's says why
and offers a new chat; used-up tokens say when they renew and the composer waits."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect

from accounts.models import UserTokenBudget
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

QUOTA = re.compile(
    r"You have used your tokens for today; they renew at 00:00 UTC \(in (\d+ h )?\d+ min\)"
)


@pytest.fixture
def legal(alice: Any) -> Persona:
    group = Group.objects.create(name="legal")
    alice.groups.add(group)
    persona = Persona.objects.create(
        slug="legal", name="Counsel", system_prompt="You review contracts.", avatar="⚖️"
    )
    persona.groups.add(group)
    return persona


def contract_chat(alice: Any, persona: Persona) -> Conversation:
    chat = Conversation.objects.create(owner=alice, persona=persona, title="Lease review")
    message_append(conversation=chat, role=Message.Role.USER, content="Is clause 4 fair?")
    message_append(conversation=chat, role=Message.Role.ASSISTANT, content="Mostly, yes.")
    return chat


def test_a_chat_whose_persona_was_taken_away_says_why_and_offers_a_new_chat(
    open_page: Callable[..., Page], alice: Any, persona: Persona, legal: Persona
) -> None:
    chat = contract_chat(alice, legal)
    page = open_page(alice, f"/c/{chat.id}/")
    expect(page.locator("#messages")).to_contain_text("Mostly, yes.")
    expect(page.locator("#chat-notice")).to_be_hidden()
    # The page was opened while Alice was still in the group; now she is not.
    alice.groups.clear()

    page.get_by_role("textbox", name="Message", exact=True).fill("And clause 5?")
    page.get_by_role("textbox", name="Message", exact=True).press("Enter")

    notice = page.locator("#chat-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("You can no longer chat with Counsel")
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_disabled()
    expect(page.locator("#send")).to_be_disabled()
    # The refused text is kept, the conversation still reads as it was, and nothing was saved.
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_have_value("And clause 5?")
    expect(page.locator("#messages")).to_contain_text("Is clause 4 fair?")
    assert Message.objects.filter(conversation=chat).count() == 2

    # Reopened later, the page knows at once: the persona is not among hers any more.
    page.reload()
    expect(page.locator("#chat-notice")).to_contain_text("no longer chat with this persona")
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_disabled()

    page.locator("#chat-notice").get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#chat-notice")).to_be_hidden()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_enabled()
    picker = page.locator("#persona-options")
    expect(picker).to_contain_text("Assistant")
    expect(picker).not_to_contain_text("Counsel")


def test_used_up_tokens_say_when_they_renew_and_disable_the_composer(
    open_page: Callable[..., Page], alice: Any, persona: Persona
) -> None:
    chat = contract_chat(alice, persona)
    page = open_page(alice, f"/c/{chat.id}/")
    expect(page.locator("#messages")).to_contain_text("Mostly, yes.")
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_enabled()
    UserTokenBudget.objects.create(user=alice, tokens=0)

    page.get_by_role("textbox", name="Message", exact=True).fill("One more question")
    page.get_by_role("textbox", name="Message", exact=True).press("Enter")

    notice = page.locator("#chat-notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_text(QUOTA)
    expect(notice.get_by_role("button", name="New chat")).to_be_hidden()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_disabled()
    expect(page.locator("#send")).to_be_disabled()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_have_value(
        "One more question"
    )
    assert Message.objects.filter(conversation=chat).count() == 2

    # A new chat waits too, and a fresh page knows from /api/usage/ before anything is sent.
    fresh = open_page(alice, "/")
    expect(fresh.locator("#chat-notice")).to_have_text(QUOTA)
    expect(fresh.get_by_role("textbox", name="Message", exact=True)).to_be_disabled()
