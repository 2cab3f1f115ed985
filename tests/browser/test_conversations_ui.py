"""Sidebar management in the browser, logging out, and another user's conversations."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from conversations.models import Conversation, Message
from conversations.services import message_append

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def conversation(owner: Any, persona: Any, title: str, *texts: str) -> Conversation:
    made = Conversation.objects.create(owner=owner, persona=persona, title=title)
    for index, text in enumerate(texts):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        message_append(conversation=made, role=role, content=text)
    return made


def titles(page: Page) -> Locator:
    return page.locator("#conversation-list .conv-title")


def test_rename_search_and_delete(open_page: Callable[..., Page], alice: Any, persona: Any) -> None:
    older = conversation(alice, persona, "Bread baking", "How long to proof dough?", "An hour.")
    newer = conversation(alice, persona, "Trip to Lisbon", "Where to eat?", "Try the quantum café.")
    page = open_page(alice)
    expect(titles(page)).to_have_text(["Trip to Lisbon", "Bread baking"])  # newest first

    # Rename with the keyboard: Enter saves.
    page.get_by_role("button", name="Rename “Bread baking”").click()
    field = page.get_by_label("New title")
    expect(field).to_be_focused()
    field.fill("Sourdough notes")
    field.press("Enter")
    expect(page.locator("#conversation-list")).to_contain_text("Sourdough notes")
    older.refresh_from_db()
    assert older.title == "Sourdough notes"

    # Escape cancels a rename.
    page.get_by_role("button", name="Rename “Sourdough notes”").click()
    page.get_by_label("New title").fill("Not this")
    page.get_by_label("New title").press("Escape")
    expect(page.locator("#conversation-list")).to_contain_text("Sourdough notes")
    older.refresh_from_db()
    assert older.title == "Sourdough notes"

    # Search covers message text, not just titles.
    search = page.get_by_label("Search conversations")
    search.fill("quantum")
    expect(titles(page)).to_have_text(["Trip to Lisbon"])
    search.fill("sourdough")
    expect(titles(page)).to_have_text(["Sourdough notes"])
    search.fill("nothing like this")
    expect(page.locator("#list-empty")).to_have_text("No conversations match.")
    search.fill("")
    expect(titles(page)).to_have_text(["Trip to Lisbon", "Sourdough notes"])

    # Open one, then delete it: cancelling keeps it, confirming removes it everywhere.
    page.locator(".conv-link", has_text="Trip to Lisbon").click()
    expect(page).to_have_url(f"/c/{newer.id}/")
    expect(page.locator("article[data-role=assistant]")).to_contain_text("quantum café")
    page.get_by_role("button", name="Delete “Trip to Lisbon”").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("“Trip to Lisbon” and all its messages will be deleted")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert Conversation.objects.filter(id=newer.id).exists()

    page.get_by_role("button", name="Delete “Trip to Lisbon”").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#conversation-list li")).to_have_count(1)
    expect(page).to_have_url("/")
    expect(page.get_by_role("heading", name="Who would you like to talk to?")).to_be_visible()
    assert not Conversation.objects.filter(id=newer.id).exists()
    assert Conversation.objects.filter(id=older.id).exists()


def test_log_out_and_the_page_is_gone(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    mine = conversation(alice, persona, "Private plans", "Secret", "Noted.")
    page = open_page(alice, path=f"/c/{mine.id}/")
    expect(page.locator("article[data-role=user] .msg-body")).to_have_text("Secret")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/accounts/login/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # Back does not bring the conversation back from a cache.
    page.go_back()
    expect(page).to_have_url(f"/accounts/login/?next=/c/{mine.id}/")
    expect(page.get_by_text("Secret")).to_have_count(0)

    page.goto(f"/c/{mine.id}/")
    expect(page).to_have_url(f"/accounts/login/?next=/c/{mine.id}/")
    expect(page.get_by_text("Secret")).to_have_count(0)
    response = page.request.get(f"/api/conversations/{mine.id}/")
    assert response.status == 401


SOCKET_PROBE = """
async ([conversationId]) => {
  const ws = new WebSocket(`ws://${location.host}/ws/chat/`);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const frames = [];
  ws.onmessage = (event) => frames.push(JSON.parse(event.data));
  const send = (frame) => ws.send(JSON.stringify(frame));
  send({type: "chat.resume", conversation_id: conversationId, after_seq: 0});
  send({type: "chat.stop", conversation_id: conversationId});
  send({type: "chat.send", conversation_id: conversationId, persona: null,
        content: "let me in", client_id: crypto.randomUUID()});
  const deadline = Date.now() + 5000;
  while (frames.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  ws.close();
  return frames;
}
"""


def test_second_user_cannot_reach_the_first_users_conversation(
    open_page: Callable[..., Page], alice: Any, bob: Any, persona: Any
) -> None:
    mine = conversation(alice, persona, "Alice's diary", "Dear diary", "Yes?")
    page = open_page(bob, path=None)

    # By URL.
    response = page.goto(f"/c/{mine.id}/")
    assert response is not None and response.status == 404
    expect(page.get_by_text("Dear diary")).to_have_count(0)

    # By API, with bob's session and CSRF token.
    page.goto("/")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    headers = {"X-CSRFToken": token, "Content-Type": "application/json"}
    base = f"/api/conversations/{mine.id}"
    answers = {
        "open": page.request.get(f"{base}/"),
        "export md": page.request.get(f"{base}/export/?format=md"),
        "export json": page.request.get(f"{base}/export/?format=json"),
        "rename": page.request.patch(f"{base}/", data='{"title": "bob was here"}', headers=headers),
        "delete": page.request.delete(f"{base}/", headers=headers),
    }
    for action, answer in answers.items():
        assert answer.status == 404, action
        assert answer.json()["error"]["code"] == "not_found", action
    assert page.request.get("/api/conversations/?q=diary").json() == []
    expect(page.locator("#conversation-list li")).to_have_count(0)

    # By socket.
    frames = page.evaluate(SOCKET_PROBE, [str(mine.id)])
    assert [f["type"] for f in frames] == ["chat.error"] * 3, frames
    assert {f["code"] for f in frames} == {"not_found"}

    mine.refresh_from_db()
    assert mine.title == "Alice's diary"
    assert mine.messages.count() == 2

    # And a made-up id looks exactly the same as alice's real one.
    response = page.goto(f"/c/{uuid.uuid4()}/")
    assert response is not None and response.status == 404


def test_older_chats_past_the_first_page_are_a_click_away(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    from conversations.api import LIST_LIMIT

    made = Conversation.objects.bulk_create(
        Conversation(owner=alice, persona=persona, title=f"Chat {n}") for n in range(LIST_LIMIT + 3)
    )
    for n, chat in enumerate(made):  # Chat 0 the oldest
        Conversation.objects.filter(id=chat.id).update(
            updated_at=chat.updated_at - timedelta(days=len(made) - n)
        )
    page = open_page(alice)
    expect(titles(page)).to_have_count(LIST_LIMIT)
    more = page.get_by_role("button", name="Show older chats")
    expect(more).to_be_visible()

    more.click()

    expect(titles(page)).to_have_count(LIST_LIMIT + 3)
    expect(titles(page).last).to_have_text("Chat 0")
    expect(more).to_be_hidden()
