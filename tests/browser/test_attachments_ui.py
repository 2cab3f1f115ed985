"""Files in the page: attached by the paperclip and by pasting a screenshot, uploaded with
progress, sent with the message and shown on it (enlarged in a lightbox), kept across a
reload; files the server refuses, the limit of four, and a persona that cannot read images.
Chromium against a real Daphne."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import FileChooser, Locator, Page, Route, expect

from attachments.models import Attachment, Upload
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona
from tests.browser.conftest import ROOT, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# UPDATE_SCREENSHOTS=1 rewrites the docs' pictures; otherwise they go to test-output/.
DOCS_SCREENSHOTS = ROOT / (
    "docs/screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else "test-output/screenshots"
)
PHONE = {"width": 390, "height": 844}
LONG = 20_000


def png(width: int, height: int) -> bytes:
    """A picture with some shapes in it, as a camera or a screenshot tool would give."""
    image = Image.new("RGB", (width, height), (246, 214, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.2, height * 0.2, width * 0.8, height * 0.9), fill=(214, 120, 40))
    for left in (0.25, 0.55):
        ear = [(left, 0.35), (left + 0.07, 0.05), (left + 0.2, 0.25)]
        draw.polygon([(width * x, height * y) for x, y in ear], fill=(190, 100, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def box(page: Page) -> Locator:
    return page.get_by_label("Message", exact=True)


def composer_files(page: Page) -> Locator:
    return page.locator("#attachments .attachment")


def hold_uploads(page: Page) -> list[Route]:
    """Keep each POST /api/uploads/ waiting until the test lets it go (route.continue_())."""
    held: list[Route] = []
    page.route("**/api/uploads/", lambda route: held.append(route))
    return held


def wait_for(page: Page, held: list[Route], count: int) -> None:
    while len(held) < count:
        page.wait_for_timeout(20)


def loaded(image: Locator) -> int:
    """The natural width of an <img> once it has loaded (0 while it has not, or failed)."""
    image.evaluate("img => img.decode().catch(() => null)")
    return int(image.evaluate("img => img.complete ? img.naturalWidth : 0"))


PASTE_SCREENSHOT = """([width, height]) => new Promise((resolve) => {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#1e3a8a";
  ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = "#fbbf24";
  ctx.fillRect(20, 20, width / 2, height / 3);
  canvas.toBlob((blob) => {
    const data = new DataTransfer();
    data.items.add(new File([blob], "screenshot.png", { type: "image/png" }));
    const event = new ClipboardEvent(
      "paste", { clipboardData: data, bubbles: true, cancelable: true });
    document.querySelector("#input").dispatchEvent(event);
    resolve(event.defaultPrevented);
  }, "image/png");
})"""


# Files dragged from the desktop: a DataTransfer holding them, as the browser builds one.
DRAG_FILES = """(names) => {
  const data = new DataTransfer();
  for (const name of names) {
    data.items.add(new File([`Notes ${name}\\n`], name, { type: "text/plain" }));
  }
  window.dragged = data;
  const init = { dataTransfer: data, bubbles: true, cancelable: true };
  document.querySelector("#messages").dispatchEvent(new DragEvent("dragenter", init));
}"""
DROP_FILES = """() => {
  const over = document.querySelector("#messages");
  const init = { dataTransfer: window.dragged, bubbles: true, cancelable: true };
  over.dispatchEvent(new DragEvent("dragover", init));
  over.dispatchEvent(new DragEvent("drop", init));
}"""


def file_choosers(page: Page) -> list[FileChooser]:
    """Every file chooser the page opens from now on. Listen long before a key may open one:
    Playwright turns the interception of pickers on without waiting for it (fire and
    forget), so `expect_file_chooser` just before the key press could lose the race. The
    picker then opened natively, and, headless, stayed open: every later press was ignored
    (seen as a test that no retry mended)."""
    opened: list[FileChooser] = []
    page.on("filechooser", lambda chooser: opened.append(chooser))
    return opened


def next_chooser(page: Page, opened: list[FileChooser], timeout_ms: int = 10_000) -> FileChooser:
    waited = 0
    while not opened and waited < timeout_ms:
        page.wait_for_timeout(20)
        waited += 20
    assert opened, "no file chooser opened"
    return opened.pop(0)


def test_images_by_the_paperclip_and_by_paste_are_sent_shown_enlarged_and_kept(
    open_page: Callable[..., Page], alice: Any, persona: Any, tmp_path: Path
) -> None:
    page = open_page(alice)
    choosers = file_choosers(page)
    photo = tmp_path / "cat.png"
    photo.write_bytes(png(640, 480))
    held = hold_uploads(page)

    # The paperclip is a labelled button the keyboard reaches; Enter opens the file picker.
    paperclip = page.get_by_role("button", name="Attach files")
    # Pressed once the page is connected: before, its script may not have wired the button
    # yet, and it puts the keyboard in the composer as it starts.
    expect(page.locator("#socket-status")).to_have_attribute(
        "data-state", "connected", timeout=15_000
    )
    expect(page.locator("#input")).to_be_focused()
    expect(paperclip).to_be_enabled()
    paperclip.focus()
    expect(paperclip).to_be_focused()
    page.keyboard.press("Enter")
    chooser = next_chooser(page, choosers)
    assert chooser.is_multiple()
    chooser.set_files(photo)
    item = composer_files(page).first
    expect(item).to_have_attribute("data-status", "uploading")
    expect(item.locator(".attachment-progress")).to_be_visible()
    expect(item.locator(".attachment-name")).to_have_text("cat.png")
    expect(item.locator(".attachment-thumb img")).to_be_visible()  # the local thumbnail
    expect(page.locator("#send")).to_be_disabled()
    box(page).fill("What is in these pictures?")
    box(page).press("Enter")
    expect(page.locator("#composer-error")).to_have_text("Wait for the files to finish uploading.")
    expect(page.locator("article[data-role=user]")).to_have_count(0)

    wait_for(page, held, 1)
    held[0].continue_()
    expect(item).to_have_attribute("data-status", "done")
    expect(item.locator(".attachment-progress")).to_be_hidden()
    expect(item.locator(".attachment-detail")).to_have_text(re.compile(r"^\d+ KB$"))

    # A screenshot pasted into the box becomes the second file; the box keeps its text.
    page.unroute("**/api/uploads/")
    assert page.evaluate(PASTE_SCREENSHOT, [300, 200]) is True
    expect(composer_files(page)).to_have_count(2)
    pasted = composer_files(page).nth(1)
    expect(pasted.locator(".attachment-name")).to_have_text("screenshot.png")
    expect(pasted).to_have_attribute("data-status", "done")
    expect(pasted.locator(".attachment-thumb img")).to_be_visible()
    expect(box(page)).to_have_value("What is in these pictures?")
    expect(page.locator("#send")).to_be_enabled()

    box(page).press("Enter")
    expect(composer_files(page)).to_have_count(0)
    sent = page.locator("article[data-role=user]")
    expect(sent.locator(".msg-image img")).to_have_count(2)
    expect(sent.locator(".msg-body")).to_have_text("What is in these pictures?")
    reply = page.locator("article[data-role=assistant]")
    expect(reply).to_have_attribute("data-status", "complete", timeout=LONG)
    # The model received both images: the demo says what it saw.
    expect(reply.locator(".msg-body")).to_contain_text(
        "I see 2 images (cat.png, 640×480, screenshot.png, 300×200)."
    )
    message = Message.objects.get(role=Message.Role.USER)
    uploads = [a.upload for a in Attachment.objects.filter(message=message).order_by("position")]
    assert [(u.name, u.width, u.height, u.owner_id) for u in uploads] == [
        ("cat.png", 640, 480, alice.id),
        ("screenshot.png", 300, 200, alice.id),
    ]

    # After a reload the images come from the server, sized before they load.
    page.reload()
    images = page.locator("article[data-role=user] .msg-image img")
    expect(images).to_have_count(2)
    first = images.first
    expect(first).to_have_attribute("src", f"/api/uploads/{uploads[0].id}/")
    expect(first).to_have_attribute("width", "240")
    expect(first).to_have_attribute("height", "180")
    assert loaded(first) == 640

    page.get_by_role("button", name="Enlarge cat.png").click()
    lightbox = page.locator("#lightbox")
    expect(lightbox).to_be_visible()
    expect(page.get_by_role("button", name="Close image")).to_be_focused()
    assert loaded(lightbox.locator("img")) == 640
    screenshot(page, "lightbox")
    page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()
    expect(page.get_by_role("button", name="Enlarge cat.png")).to_be_focused()
    page.get_by_role("button", name="Enlarge screenshot.png").click()
    expect(lightbox).to_be_visible()
    page.get_by_role("button", name="Close image").click()
    expect(lightbox).to_be_hidden()

    page.locator("#scroller").evaluate("el => { el.scrollTop = 0; }")
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = DOCS_SCREENSHOTS / "message-with-image.png"
    page.screenshot(path=str(path), animations="disabled")
    assert path.stat().st_size > 10_000


def test_refused_files_say_why_dropped_files_past_four_are_refused_removing_deletes(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    # An HTML page dressed up as a PNG: judged by its content, refused.
    disguised = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
    page.locator("#file-input").set_input_files(
        {"name": "x.png", "mimeType": "image/png", "buffer": disguised}
    )
    refused = composer_files(page).first
    expect(refused).to_have_attribute("data-status", "error")
    # The message is the server's own, word for word: the same file posted by hand.
    token = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    answer = page.request.post(
        "/api/uploads/",
        headers={"X-CSRFToken": token},
        multipart={"file": {"name": "x.png", "mimeType": "image/png", "buffer": disguised}},
    )
    assert answer.status == 400, answer.text()
    message = answer.json()["error"]["message"]
    assert message.startswith("HTML, SVG and XML files are not accepted"), message
    expect(refused.locator(".attachment-detail")).to_have_text(message)
    expect(refused.get_by_role("alert")).to_be_visible()
    assert not Upload.objects.exists()

    # Four files more are room for four; the fifth is refused by name (the failed one does
    # not count).
    # Dropped on the chat: a hint shows where while they are dragged over it.
    page.evaluate(DRAG_FILES, [f"{name}.txt" for name in "abcde"])
    expect(page.locator("#drop-hint")).to_be_visible()
    page.evaluate(DROP_FILES)
    expect(page.locator("#drop-hint")).to_be_hidden()
    expect(page.locator("#composer-error")).to_have_text(
        "You can attach up to 4 files to a message: “e.txt” was not added."
    )
    expect(composer_files(page)).to_have_count(5)
    expect(page.locator("#attachments .attachment[data-status=done]")).to_have_count(4)
    assert Upload.objects.filter(owner=alice).count() == 4

    # Remove (the cross) takes the upload too; the keyboard moves on to the next file's.
    page.get_by_role("button", name="Remove b.txt").focus()
    with page.expect_response(
        lambda r: r.request.method == "DELETE" and "/api/uploads/" in r.url
    ) as deleted:
        page.keyboard.press("Enter")
    assert deleted.value.status == 204
    expect(composer_files(page)).to_have_count(4)
    expect(page.get_by_role("button", name="Remove c.txt")).to_be_focused()
    page.get_by_role("button", name="Remove x.png").click()
    expect(composer_files(page)).to_have_count(3)
    assert set(Upload.objects.values_list("name", flat=True)) == {"a.txt", "c.txt", "d.txt"}

    # Files alone make a message; the reply names them.
    page.locator("#send").click()
    expect(composer_files(page)).to_have_count(0)
    sent = page.locator("article[data-role=user]")
    expect(sent.locator(".msg-file")).to_have_count(3)
    expect(sent.locator(".msg-file").first).to_contain_text("a.txt")
    expect(sent.locator("a.msg-file").first).to_have_attribute("download", "a.txt")
    reply = page.locator("article[data-role=assistant]")
    expect(reply).to_have_attribute("data-status", "complete", timeout=LONG)
    expect(reply.locator(".msg-body")).to_contain_text("I see 3 files (a.txt, c.txt, d.txt).")
    assert Message.objects.get(role=Message.Role.USER).content == ""


def test_a_persona_that_cannot_read_images_warns_and_the_refusal_gives_the_files_back(
    open_page: Callable[..., Page], alice: Any, persona: Any, tmp_path: Path
) -> None:
    poet = Persona.objects.create(
        slug="poet", name="Poet", system_prompt="Verse.", avatar="🪶", accepts_images=False
    )
    chat = Conversation.objects.create(owner=alice, persona=poet, title="Verses")
    message_append(conversation=chat, role=Message.Role.USER, content="A haiku?")
    message_append(conversation=chat, role=Message.Role.ASSISTANT, content="Autumn moonlight.")
    page = open_page(alice, f"/c/{chat.id}/", viewport=PHONE)
    expect(page.locator("#messages")).to_contain_text("Autumn moonlight.")

    photo = tmp_path / "moon.png"
    photo.write_bytes(png(400, 300))
    notes = tmp_path / "a-rather-long-file-name-for-the-phone.md"
    notes.write_text("# Moon\nIt rises.\n")
    tides = tmp_path / "tides.csv"
    tides.write_text("hour,height\n6,1.2\n12,3.4\n")
    draft = tmp_path / "draft.txt"
    draft.write_text("Pale light on the water.\n")
    page.locator("#file-input").set_input_files([photo, notes, tides, draft])
    expect(page.locator("#attachments .attachment[data-status=done]")).to_have_count(4)
    expect(page.locator("#composer-warning")).to_have_text(
        "Poet cannot read images: remove them before sending (text and PDF files are fine)."
    )
    # On a phone the four files stay in one row that scrolls, inside the screen.
    width = PHONE["width"]
    screenshot(page, "composer-phone")
    for node in composer_files(page).all():
        found = node.bounding_box()
        assert found is not None and found["height"] < 100, found
    attachments_box = page.locator("#attachments").bounding_box()
    assert attachments_box is not None and attachments_box["x"] + attachments_box["width"] <= width
    scroll = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll[0] <= scroll[1], scroll

    # Sent anyway: the server refuses, says why, and the text and files come back.
    box(page).fill("Write about this")
    box(page).press("Enter")
    expect(page.locator("#composer-error")).to_contain_text("image")
    expect(box(page)).to_have_value("Write about this")
    expect(page.locator("#attachments .attachment[data-status=done]")).to_have_count(4)
    assert Message.objects.filter(conversation=chat).count() == 2

    # Without the image it goes through.
    page.get_by_role("button", name="Remove moon.png").click()
    expect(page.locator("#composer-warning")).to_be_hidden()
    box(page).press("Enter")
    reply = page.locator("article[data-role=assistant]").last
    expect(page.locator("article[data-role=assistant]")).to_have_count(2)
    expect(reply).to_have_attribute("data-status", "complete", timeout=LONG)
    expect(reply.locator(".msg-body")).to_contain_text(
        "I see 3 files (a-rather-long-file-name-for-the-phone.md, tides.csv, draft.txt)."
    )

    # The Share dialog fits the phone's screen.
    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Share this conversation")
    expect(dialog).to_be_visible()
    expect(page.get_by_role("button", name="Create link")).to_be_enabled()
    screenshot(page, "share-dialog-phone")
    found = dialog.bounding_box()
    assert found is not None and found["x"] >= 0 and found["x"] + found["width"] <= width, found
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Share")).to_be_focused()
