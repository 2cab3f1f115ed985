"""Sharing from the page: Alice shares a conversation with an image from the Share dialog
(keyboard throughout) and copies the link; Bob, in another browser, reads the snapshot
without learning who Alice is, continues it as his own chat; Alice revokes and the link is
gone. Chromium against a real Daphne."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect

from accounts.models import Profile
from conversations.models import Conversation, Message
from sharing.models import Share
from sharing.services import share_save
from tests.browser.conftest import DESKTOP, ROOT, screenshot
from tests.browser.test_attachments_ui import PHONE, loaded
from tests.browser.test_rendering import Watch, rendered_conversation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DOCS_SCREENSHOTS = ROOT / (
    "docs/screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else "test-output/screenshots"
)
LONG = 20_000
EXPLAINED = (
    "Signed-in people with the link will see the messages of this version of the chat as they"
    " are now, with their files, the persona and the title — not your name or profile, though"
    " what the messages say is shared as written. Later messages are not included until you"
    " share again."
)


def flowers(width: int, height: int) -> bytes:
    """A photo of a flower bed, as far as shapes go."""
    image = Image.new("RGB", (width, height), (186, 222, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 0.7, width, height), fill=(120, 86, 60))
    colours = [(232, 72, 98), (250, 196, 64), (164, 92, 220), (240, 120, 60)]
    for index in range(6):
        x = width * (0.12 + index * 0.15)
        y = height * (0.42 + 0.08 * (index % 2))
        draw.line((x, y, x, height * 0.75), fill=(60, 130, 60), width=4)
        r = width * 0.05
        for dx, dy in ((-r, 0), (r, 0), (0, -r), (0, r)):
            petal = (x + dx - r * 0.7, y + dy - r * 0.7, x + dx + r * 0.7, y + dy + r * 0.7)
            draw.ellipse(petal, fill=colours[index % len(colours)])
        draw.ellipse((x - r * 0.5, y - r * 0.5, x + r * 0.5, y + r * 0.5), fill=(255, 230, 90))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_share_read_continue_and_revoke(
    open_page: Callable[..., Page], alice: Any, bob: Any, persona: Any, tmp_path: Path
) -> None:
    # The demo greets users by their display name; with none, only the account could say
    # who Alice is, and the shared page must not.
    Profile.objects.filter(user=alice).update(display_name="", about="Lives at 12 Elm Street.")
    page = open_page(alice, permissions=["clipboard-read", "clipboard-write"])
    photo = tmp_path / "garden.png"
    photo.write_bytes(flowers(480, 360))
    page.locator("#file-input").set_input_files(photo)
    expect(page.locator("#attachments .attachment[data-status=done]")).to_have_count(1)
    box = page.get_by_label("Message", exact=True)
    box.fill("Which flowers are these?")
    box.press("Enter")
    reply = page.locator("article[data-role=assistant]")
    expect(reply).to_have_attribute("data-status", "complete", timeout=LONG)
    chat = Conversation.objects.get(owner=alice)
    expect(page).to_have_url(re.compile(rf"/c/{chat.id}/$"))

    # The dialog says what others will see, and the way through it is the keyboard's.
    share_button = page.get_by_role("button", name="Share")
    share_button.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Share this conversation")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(EXPLAINED)
    expect(dialog.get_by_role("status")).to_contain_text("Not shared")
    create = dialog.get_by_role("button", name="Create link")
    expect(create).to_be_focused()
    page.keyboard.press("Enter")
    link_field = dialog.get_by_label("Link to the shared conversation")
    expect(link_field).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/s/[^/]+/$"))
    share = Share.objects.get(conversation=chat)
    link = link_field.input_value()
    assert link.endswith(f"/s/{share.token}/")
    expect(dialog.get_by_role("status")).to_contain_text("Shared on")
    expect(dialog.get_by_role("button", name="Update snapshot")).to_be_visible()
    screenshot(page, "share-dialog")
    copy = dialog.get_by_role("button", name="Copy link")
    expect(copy).to_be_focused()
    page.keyboard.press("Enter")
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == link
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(share_button).to_be_focused()

    # Bob, signed in elsewhere, reads the snapshot: the messages and the image, not Alice.
    reader = open_page(bob, path=None)
    response = reader.goto(link)
    assert response is not None and response.status == 200
    expect(reader.get_by_role("heading", name="Which flowers are these?")).to_be_visible()
    expect(reader.locator("article[data-role=user] .msg-body")).to_have_text(
        "Which flowers are these?"
    )
    shared_reply = reader.locator("article[data-role=assistant] .msg-body")
    expect(shared_reply).to_contain_text(visible_reply_start(chat))
    # What the model was shown is part of the snapshot too.
    expect(shared_reply).to_contain_text("I see 1 image (garden.png, 480×360)")
    image = reader.locator("img[alt='garden.png']")
    expect(image).to_be_visible()
    assert loaded(image) == 480
    html = reader.content().lower()
    for secret in ("alice", "12 elm street", alice.email.lower() or "alice@"):
        assert secret not in html, secret
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    picture = DOCS_SCREENSHOTS / "shared-conversation.png"
    reader.screenshot(path=str(picture), animations="disabled", full_page=True)
    assert picture.stat().st_size > 10_000
    # On a phone the page fits the screen's width.
    reader.set_viewport_size({"width": PHONE["width"], "height": PHONE["height"]})
    scroll = reader.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll[0] <= scroll[1], scroll
    screenshot(reader, "shared-conversation-phone")
    reader.set_viewport_size({"width": DESKTOP["width"], "height": DESKTOP["height"]})

    # "Continue this chat": Bob's own copy, in his chat page, with the image.
    reader.get_by_role("button", name="Continue this chat").click()
    expect(reader).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    copy_id = reader.url.rstrip("/").rsplit("/", 1)[-1]
    mine = Conversation.objects.get(id=copy_id)
    assert mine.owner_id == bob.id and mine.id != chat.id
    expect(reader.locator("article[data-role=user] .msg-body")).to_have_text(
        "Which flowers are these?"
    )
    copied = reader.locator("article[data-role=user] .msg-image img")
    expect(copied).to_have_count(1)
    assert loaded(copied) == 480
    assert Message.objects.filter(conversation=chat).count() == 2, "Alice's chat is untouched"
    reader.go_back()
    expect(reader.get_by_role("button", name="Continue this chat")).to_be_visible()

    # Alice revokes; Bob's reload of the shared page finds the link gone.
    share_button.click()
    expect(dialog.get_by_role("status")).to_contain_text("Shared on")
    dialog.get_by_role("button", name="Revoke link").click()
    expect(dialog.get_by_role("status")).to_contain_text("Not shared")
    expect(dialog.get_by_role("button", name="Create link")).to_be_focused()
    expect(link_field).to_be_hidden()
    assert not Share.objects.filter(conversation=chat).exists()
    gone = reader.reload()
    assert gone is not None and gone.status == 404
    expect(reader.get_by_role("heading", name="This link does not work")).to_be_visible()
    expect(reader.locator("body")).not_to_contain_text("Which flowers are these?")


def visible_reply_start(chat: Conversation) -> str:
    """The first words of the saved reply, as the shared page shows them."""
    reply = Message.objects.get(conversation=chat, role=Message.Role.ASSISTANT)
    return " ".join(reply.content.split()[:4])


def test_the_shared_page_renders_markdown_through_the_chat_pages_sanitizer(
    open_page: Callable[..., Page], app_url: str, alice: Any, bob: Any, persona: Any
) -> None:
    made = rendered_conversation(alice, persona)
    share = share_save(conversation=made)
    reader = open_page(bob, path=None, permissions=["clipboard-read", "clipboard-write"])
    watch = Watch(reader, app_url)
    reader.goto(f"/s/{share.token}/")

    reply = reader.locator("article[data-role=assistant]").first
    expect(reply.locator("strong")).to_have_text("plan")
    expect(reply.locator("table td").first).to_have_text("ruff")
    code = reply.locator(".codeblock pre code")
    expect(code.locator("span.hljs-keyword").first).to_have_text("def")
    copy = reply.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert reader.evaluate("navigator.clipboard.readText()").startswith("def greet(name: str)")

    safe = reply.get_by_role("link", name="safe link")
    expect(safe).to_have_attribute("rel", "noopener noreferrer")
    assert reply.locator("a", has_text="bad one").get_attribute("href") is None
    expect(reply.get_by_role("link", name="tracker")).to_have_attribute(
        "href", "https://tracker.example/pixel.png"
    )
    expect(reply).to_contain_text("raw <script>alert(1)</script> text")
    assert reader.locator("#messages img, #messages script, [onerror]").count() == 0
    failed = reader.locator("article[data-role=assistant]").last
    expect(failed.locator(".msg-status")).to_have_text("Error")
    watch.assert_clean()
