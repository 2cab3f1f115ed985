"""Versions in the page: regenerate, retry, edit and resend, the version switcher ("2 / 3"),
feedback and token usage, in Chromium against a real Daphne."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.browser.conftest import ROOT, visible_text

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# UPDATE_SCREENSHOTS=1 rewrites the README's pictures; otherwise they go to test-output/.
DOCS_SCREENSHOTS = ROOT / (
    "docs/screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else "test-output/screenshots"
)
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
LONG = 20_000


def send(page: Page, text: str) -> Locator:
    """Type and send with Enter; return the reply that answers it."""
    before = page.locator("article[data-role=assistant]").count()
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    expect(page.locator("article[data-role=assistant]")).to_have_count(before + 1)
    return page.locator("article[data-role=assistant]").nth(before)


def finished(page: Page, text: str) -> Locator:
    reply = send(page, text)
    expect(reply).to_have_attribute("data-status", "complete", timeout=LONG)
    return reply


def body(node: Locator) -> str:
    return " ".join(node.locator(".msg-body").inner_text().split())


def versions(node: Locator) -> Locator:
    return node.locator(".version-count")


def assistant(page: Page) -> Locator:
    return page.locator("article[data-role=assistant]")


def user(page: Page) -> Locator:
    return page.locator("article[data-role=user]")


def no_horizontal_scroll(page: Page) -> None:
    overflow = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.querySelector('#scroller').scrollWidth,"
        " document.querySelector('#scroller').clientWidth]"
    )
    assert overflow[0] <= overflow[1] and overflow[2] <= overflow[3], overflow


def test_regenerate_then_switch_back_and_the_choice_survives_a_reload(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    reply = finished(page, "Why is the sky blue?")
    first = Message.objects.get(role=Message.Role.ASSISTANT)
    assert first.input_tokens and first.output_tokens
    expect(reply.locator(".msg-usage")).to_have_text(
        f"{first.input_tokens} in · {first.output_tokens} out tokens"
    )
    expect(versions(reply)).to_have_count(0)

    page.get_by_role("button", name="Regenerate reply").click()
    expect(assistant(page)).to_have_count(1)
    new = assistant(page).last
    expect(new).to_have_attribute("data-status", "streaming")
    expect(new).to_have_attribute("data-status", "complete", timeout=LONG)
    expect(versions(new)).to_have_text("2 / 2")
    second = Message.objects.filter(role=Message.Role.ASSISTANT).exclude(id=first.id).get()
    expect(new).to_have_attribute("data-id", str(second.id))
    assert second.parent_id == first.parent_id, "a version of the same reply"

    page.get_by_role("button", name="Previous version").click()
    shown = assistant(page).last
    expect(shown).to_have_attribute("data-id", str(first.id))
    expect(versions(shown)).to_have_text("1 / 2")
    assert body(shown) == visible_text(first.content)
    expect(page.get_by_role("button", name="Previous version")).to_be_disabled()
    expect(page.get_by_role("button", name="Next version")).to_be_focused()
    assert Conversation.objects.get().current_leaf_id == first.id

    page.reload()
    shown = assistant(page).last
    expect(shown).to_have_attribute("data-id", str(first.id))
    expect(versions(shown)).to_have_text("1 / 2")

    page.get_by_role("button", name="Next version").click()
    expect(assistant(page).last).to_have_attribute("data-id", str(second.id))
    expect(versions(assistant(page).last)).to_have_text("2 / 2")


def test_a_stopped_reply_shows_retry_and_its_new_version_replaces_it(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    reply = send(page, "Tell me everything about lighthouses.")
    expect(reply.locator(".msg-body")).to_contain_text("Hello Alice")
    page.get_by_role("button", name="Stop").click()
    expect(reply).to_have_attribute("data-status", "stopped")
    stopped = Message.objects.get(role=Message.Role.ASSISTANT)

    retry = page.get_by_role("button", name="Retry reply")
    expect(retry).to_be_visible()
    expect(page.get_by_role("button", name="Regenerate reply")).to_have_count(0)
    retry.click()
    new = assistant(page).last
    expect(new).to_have_attribute("data-status", "complete", timeout=LONG)
    expect(assistant(page)).to_have_count(1)
    expect(versions(new)).to_have_text("2 / 2")
    expect(page.get_by_role("button", name="Retry reply")).to_have_count(0)
    complete = Message.objects.get(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE)
    assert body(new) == visible_text(complete.content)

    page.get_by_role("button", name="Previous version").click()
    old = assistant(page).last
    expect(old).to_have_attribute("data-status", "stopped")
    expect(versions(old)).to_have_text("1 / 2")
    assert body(old) == visible_text(stopped.content)
    assert len(stopped.content) < len(complete.content)


def test_edit_and_resend_makes_a_new_version_and_the_old_path_is_one_click_away(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    finished(page, "Name a river in France.")
    finished(page, "And one in Spain?")
    expect(page.locator("article")).to_have_count(4)

    # Cancel puts the message back as it was; so does Esc.
    first = user(page).first
    first.get_by_role("button", name="Edit message").click()
    editor = page.get_by_label("Edit your message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Name a river in France.")
    editor.fill("Something else")
    page.get_by_role("button", name="Cancel").click()
    expect(editor).to_have_count(0)
    expect(first.locator(".msg-body")).to_have_text("Name a river in France.")
    expect(first.get_by_role("button", name="Edit message")).to_be_focused()
    page.keyboard.press("Enter")  # the focused Edit button
    expect(editor).to_be_focused()
    editor.fill("Something else")
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(first.locator(".msg-body")).to_have_text("Name a river in France.")

    first.get_by_role("button", name="Edit message").click()
    editor.fill("Name a river in Italy.")
    page.get_by_role("button", name="Send edited message").click()
    expect(page.locator("article")).to_have_count(2)
    expect(user(page).first.locator(".msg-body")).to_have_text("Name a river in Italy.")
    expect(versions(user(page).first)).to_have_text("2 / 2")
    expect(assistant(page).last).to_have_attribute("data-status", "complete", timeout=LONG)
    assert Message.objects.filter(role=Message.Role.USER, parent=None).count() == 2
    edited = Message.objects.get(content="Name a river in Italy.")
    reply = Message.objects.get(parent=edited)
    assert "Italy" in reply.content and "France" not in reply.content

    page.get_by_role("button", name="Previous version").click()
    expect(page.locator("article")).to_have_count(4)
    expect(user(page).first.locator(".msg-body")).to_have_text("Name a river in France.")
    expect(versions(user(page).first)).to_have_text("1 / 2")
    expect(user(page).last.locator(".msg-body")).to_have_text("And one in Spain?")
    page.reload()
    expect(page.locator("article")).to_have_count(4)
    expect(versions(user(page).first)).to_have_text("1 / 2")


def test_arrow_up_in_an_empty_composer_edits_the_last_message(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    finished(page, "First question")
    finished(page, "Second question")
    box = page.get_by_label("Message", exact=True)
    box.fill("draft")
    box.press("ArrowUp")
    expect(page.get_by_label("Edit your message")).to_have_count(0)  # only an empty box
    box.fill("")
    box.press("ArrowUp")
    editor = page.get_by_label("Edit your message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Second question")
    page.keyboard.press("End")
    page.keyboard.type(", edited")
    page.keyboard.press("Enter")
    expect(user(page).last.locator(".msg-body")).to_have_text("Second question, edited")
    expect(versions(user(page).last)).to_have_text("2 / 2")
    expect(page.locator("article")).to_have_count(4)
    expect(assistant(page).last).to_have_attribute("data-status", "complete", timeout=LONG)

    # Every control is a labelled button the keyboard reaches.
    controls = page.locator(".msg-footer button")
    assert controls.count() >= 8
    for index in range(controls.count()):
        control = controls.nth(index)
        assert control.get_attribute("aria-label"), control.inner_html()
        assert control.get_attribute("tabindex") in (None, "0")
    page.get_by_role("button", name="Regenerate reply").last.focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Copy reply").last).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Good reply").last).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_role("button", name="Good reply").last).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.get_by_role("button", name="Good reply").last).to_be_focused()


def test_thumbs_down_with_a_comment_persists_and_thumbs_clear(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    finished(page, "Give me a haiku about rain.")
    reply = Message.objects.get(role=Message.Role.ASSISTANT)
    bad = page.get_by_role("button", name="Bad reply")
    good = page.get_by_role("button", name="Good reply")
    expect(bad).to_have_attribute("aria-pressed", "false")
    bad.click()
    comment = page.get_by_label("What was wrong with this reply? (optional)")
    expect(comment).to_be_focused()
    expect(bad).to_have_attribute("aria-pressed", "true")
    comment.fill("Not a haiku at all.")
    page.get_by_role("button", name="Send feedback").click()
    expect(comment).to_have_count(0)
    expect(bad).to_be_focused()
    reply.refresh_from_db()
    assert (reply.rating, reply.rating_comment) == (-1, "Not a haiku at all.")

    page.reload()
    expect(bad).to_have_attribute("aria-pressed", "true")
    expect(good).to_have_attribute("aria-pressed", "false")
    reply.refresh_from_db()
    assert reply.rating_comment == "Not a haiku at all."

    good.click()
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(bad).to_have_attribute("aria-pressed", "false")
    good.click()  # the active one again clears it
    expect(good).to_have_attribute("aria-pressed", "false")
    reply.refresh_from_db()
    assert reply.rating is None

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy reply").click()
    expect(page.get_by_role("button", name="Copy reply")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == reply.content


def test_a_second_tab_sees_a_regenerate_live(
    new_context: Callable[..., Any], page_errors: Any, alice: Any, persona: Any
) -> None:
    context = new_context(alice)
    first = context.new_page()
    page_errors.watch(first)
    first.goto("/")
    finished(first, "What is a fjord?")
    second = context.new_page()
    page_errors.watch(second)
    second.goto(first.url)
    expect(assistant(second)).to_have_count(1)
    expect(assistant(second).last).to_have_attribute("data-status", "complete")

    first.get_by_role("button", name="Regenerate reply").click()
    mirror = assistant(second).last
    expect(mirror).to_have_attribute("data-status", "streaming")
    expect(assistant(second)).to_have_count(1)
    expect(mirror).to_have_attribute("data-status", "complete", timeout=LONG)
    expect(versions(mirror)).to_have_text("2 / 2")
    expect(versions(assistant(first).last)).to_have_text("2 / 2")
    latest = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("created_at").last()
    assert latest is not None
    expect(mirror).to_have_attribute("data-id", str(latest.id))
    assert body(mirror) == body(assistant(first).last)


def _conversation_with_versions(owner: Any, persona: Any) -> Conversation:
    """A chat whose second question was edited once and whose last reply has three versions."""
    chat = Conversation.objects.create(owner=owner, persona=persona, title="Sourdough timing")
    message_append(
        conversation=chat, role=Message.Role.USER, content="How long should sourdough proof?"
    )
    first = message_append(
        conversation=chat,
        role=Message.Role.ASSISTANT,
        content="At room temperature (about 24 °C), **4 to 6 hours** for the bulk proof.\n\n"
        "- Look for a rise of about 50%\n- A domed, jiggly surface",
        input_tokens=42,
        output_tokens=31,
    )
    message_append(conversation=chat, role=Message.Role.USER, content="And in the fridge?")
    message_append(
        conversation=chat,
        role=Message.Role.ASSISTANT,
        content="Overnight, 8 to 16 hours.",
        input_tokens=80,
        output_tokens=7,
    )
    # The edit: a second version of the question, answered three times.
    chat.current_leaf = first
    chat.save(update_fields=["current_leaf"])
    message_append(
        conversation=chat, role=Message.Role.USER, content="And if I retard it in the fridge?"
    )
    question = chat.current_leaf
    assert question is not None
    for text, status, tokens in [
        ("Overnight works: 12 to 14 hours at 4 °C.", Message.Status.STOPPED, 9),
        (
            "Cold retarding slows the yeast a lot: plan for 12 to 48 hours.",
            Message.Status.COMPLETE,
            14,
        ),
        (
            "In the fridge (3 to 5 °C) the dough can proof for **12 to 48 hours**. "
            "Longer gives a tangier loaf; bake straight from the fridge for a better ear.",
            Message.Status.COMPLETE,
            33,
        ),
    ]:
        chat.current_leaf = question
        chat.save(update_fields=["current_leaf"])
        last = message_append(
            conversation=chat,
            role=Message.Role.ASSISTANT,
            content=text,
            status=status,
            input_tokens=95,
            output_tokens=tokens,
        )
    Message.objects.filter(id=last.id).update(rating=1)
    return chat


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_screenshots_of_a_conversation_with_versions(
    open_page: Callable[..., Page], alice: Any, persona: Any, name: str, viewport: dict[str, int]
) -> None:
    chat = _conversation_with_versions(alice, persona)
    page = open_page(alice, path=f"/c/{chat.id}/", viewport=viewport)
    expect(page.locator("article")).to_have_count(4)
    question, reply = user(page).last, assistant(page).last
    expect(versions(question)).to_have_text("2 / 2")
    expect(versions(reply)).to_have_text("3 / 3")
    expect(reply.get_by_role("button", name="Good reply")).to_have_attribute("aria-pressed", "true")
    expect(reply.locator(".msg-usage")).to_have_text("95 in · 33 out tokens")
    no_horizontal_scroll(page)
    # The footer wraps inside its message rather than running past the screen's edge.
    for footer in page.locator(".msg-footer").all():
        box = footer.bounding_box()
        assert box is not None and box["x"] + box["width"] <= viewport["width"], box
    # The same page with the earlier version of the question chosen, and its reply's Retry.
    page.get_by_role("button", name="Previous version").last.click()
    expect(versions(reply)).to_have_text("2 / 3")
    page.get_by_role("button", name="Previous version").last.click()
    expect(assistant(page).last).to_have_attribute("data-status", "stopped")
    expect(page.get_by_role("button", name="Retry reply")).to_be_visible()
    page.get_by_role("button", name="Next version").last.click()
    expect(versions(assistant(page).last)).to_have_text("2 / 3")
    page.get_by_role("button", name="Next version").last.click()
    expect(versions(assistant(page).last)).to_have_text("3 / 3")
    page.get_by_role("button", name="Bad reply").first.click()
    expect(page.get_by_label("What was wrong with this reply? (optional)")).to_be_visible()
    page.get_by_label("What was wrong with this reply? (optional)").fill("Too vague on timing")
    no_horizontal_scroll(page)
    page.get_by_role("button", name="Skip").click()
    user(page).last.get_by_role("button", name="Edit message").click()
    expect(page.get_by_label("Edit your message")).to_be_focused()
    no_horizontal_scroll(page)
    page.get_by_role("button", name="Cancel").click()
    expect(versions(user(page).last)).to_have_text("2 / 2")
    no_horizontal_scroll(page)
    page.locator("#scroller").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path: Path = DOCS_SCREENSHOTS / f"branches-{name}.png"
    page.screenshot(path=str(path), animations="disabled")
    assert path.stat().st_size > 10_000
