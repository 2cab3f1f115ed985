"""Hostile text stays text; markdown renders safely; the page looks right at two widths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Request, expect

from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona
from tests.browser.conftest import DESKTOP, PHONE, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"
JS_LINK = "[x](javascript:alert(1))"
HOSTILE = f"{IMG} {SCRIPT} {JS_LINK}"

INJECTED = "#app img, #app script, #app iframe, #app object, #app embed, [onerror], [onclick]"


class Watch:
    """Fails the test on any dialog, and on any request that leaves the app or loads `x`."""

    def __init__(self, page: Page, app_url: str) -> None:
        self.origin = urlsplit(app_url)._replace(path="", query="", fragment="").geturl()
        self.dialogs: list[str] = []
        self.stray: list[str] = []
        page.on("dialog", self._dialog)
        page.on("request", self._request)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _request(self, request: Request) -> None:
        url = request.url
        parts = urlsplit(url)
        own = url.startswith(self.origin + "/") or url.startswith(
            self.origin.replace("http", "ws", 1) + "/"
        )
        if not own or parts.path.rstrip("/").endswith("/x") or parts.scheme == "javascript":
            self.stray.append(url)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.stray == [], f"unexpected requests: {self.stray}"


def test_hostile_content_is_shown_as_text_and_runs_nothing(
    open_page: Callable[..., Page], app_url: str, alice: Any
) -> None:
    Persona.objects.create(
        slug="evil",
        name=f"Evil {IMG}",
        description=f"{SCRIPT} <b>bold</b> {JS_LINK}",
        system_prompt="Be evil.",
        avatar="<i>",
        is_default=True,
    )
    page = open_page(alice, path=None)
    watch = Watch(page, app_url)
    page.goto("/")

    card = page.locator(".persona-card")
    expect(card.locator(".persona-name")).to_have_text(f"Evil {IMG}")
    expect(card.locator(".persona-description")).to_have_text(f"{SCRIPT} <b>bold</b> {JS_LINK}")
    expect(card.locator(".persona-avatar")).to_have_text("<i>")

    box = page.get_by_label("Message", exact=True)
    box.fill(HOSTILE)
    box.press("Enter")
    reply = page.locator("article[data-role=assistant]")
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)

    expect(page.locator("article[data-role=user] .msg-body")).to_have_text(HOSTILE)
    # The demo model repeats the question and the persona's name and description.
    body = reply.locator(".msg-body")
    expect(body).to_contain_text(IMG)
    expect(body).to_contain_text(SCRIPT)
    expect(body).to_contain_text(f"This is Evil {IMG}")
    expect(reply.locator(".msg-author")).to_have_text(f"Evil {IMG}")
    # The title comes from the message: text in the heading, the tab title and the sidebar.
    expect(page.get_by_role("heading", level=1)).to_contain_text(IMG)
    expect(page.locator("#conversation-list .conv-title")).to_contain_text("<img src=x")
    expect(page.locator("#conversation-persona")).to_contain_text(f"Evil {IMG}")

    assert page.locator(INJECTED).count() == 0
    assert page.locator("a[href^='javascript' i]").count() == 0
    assert page.locator("#messages b, #persona-picker b").count() == 0
    assert page.evaluate("typeof window.alert") == "function"

    # Reloading renders the saved text the same way, from the API this time.
    page.reload()
    expect(page.locator("article[data-role=assistant] .msg-body")).to_contain_text(IMG)
    expect(page.locator("article[data-role=user] .msg-body")).to_have_text(HOSTILE)
    assert page.locator(INJECTED).count() == 0
    page.wait_for_timeout(300)  # give a late onerror or script the chance to fire
    watch.assert_clean()


MARKDOWN = """Here is a **plan** with `inline code`:

1. Measure first
2. Change one thing

| tool | use |
|------|-----|
| ruff | lint |
| mypy | types |

```python
def greet(name: str) -> str:
    return f"Hello {name}"
```

A [safe link](https://example.com/docs) and a [bad one](javascript:alert(1)) and
![tracker](https://tracker.example/pixel.png) and raw <script>alert(1)</script> text.
"""


def rendered_conversation(owner: Any, persona: Any) -> Conversation:
    made = Conversation.objects.create(owner=owner, persona=persona, title="Python style tips")
    message_append(conversation=made, role=Message.Role.USER, content="How should I lint Python?")
    message_append(conversation=made, role=Message.Role.ASSISTANT, content=MARKDOWN)
    message_append(conversation=made, role=Message.Role.USER, content="And if the model fails?")
    message_append(
        conversation=made,
        role=Message.Role.ASSISTANT,
        content="Partial answer before the provider",
        status=Message.Status.ERROR,
        error="The provider refused the request.",
    )
    return made


def test_markdown_renders_safely_with_highlighted_code_and_copy(
    open_page: Callable[..., Page], app_url: str, alice: Any, persona: Any
) -> None:
    made = rendered_conversation(alice, persona)
    page = open_page(alice, path=None, permissions=["clipboard-read", "clipboard-write"])
    watch = Watch(page, app_url)
    page.goto(f"/c/{made.id}/")

    reply = page.locator("article[data-role=assistant]").first
    expect(reply.locator("strong")).to_have_text("plan")
    expect(reply.locator("p code")).to_have_text("inline code")
    expect(reply.locator("ol li")).to_have_count(2)
    expect(reply.locator("table th")).to_have_text(["tool", "use"])
    expect(reply.locator("table td").first).to_have_text("ruff")

    code = reply.locator(".codeblock pre code")
    expect(code).to_contain_text('return f"Hello {name}"')
    expect(code.locator("span.hljs-keyword").first).to_have_text("def")
    expect(reply.locator(".codeblock-head")).to_contain_text("python")
    copy = reply.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard.startswith("def greet(name: str) -> str:")

    safe = reply.get_by_role("link", name="safe link")
    expect(safe).to_have_attribute("href", "https://example.com/docs")
    expect(safe).to_have_attribute("rel", "noopener noreferrer")
    expect(safe).to_have_attribute("target", "_blank")
    bad = reply.locator("a", has_text="bad one")
    expect(bad).not_to_have_attribute("href", "javascript:alert(1)")
    assert bad.get_attribute("href") is None
    # An image becomes a link the user may follow, never a request the page makes.
    expect(reply.get_by_role("link", name="tracker")).to_have_attribute(
        "href", "https://tracker.example/pixel.png"
    )
    expect(reply).to_contain_text("raw <script>alert(1)</script> text")

    failed = page.locator("article[data-role=assistant]").last
    expect(failed).to_have_attribute("data-status", "error")
    expect(failed.locator(".msg-status")).to_have_text("Error")
    expect(failed).to_contain_text("The provider refused the request.")
    watch.assert_clean()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_at_desktop_and_phone_width(
    open_page: Callable[..., Page], alice: Any, persona: Any, pirate: Any, scheme: str
) -> None:
    made = rendered_conversation(alice, persona)
    Conversation.objects.create(owner=alice, persona=pirate, title="Treasure maps")
    suffix = "" if scheme == "light" else "-dark"

    page = open_page(alice, path=f"/c/{made.id}/", viewport=DESKTOP, color_scheme=scheme)
    expect(page.locator(".codeblock")).to_be_visible()
    expect(page.locator("#socket-status")).to_have_attribute("data-state", "connected")
    screenshot(page, f"chat-desktop{suffix}")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".persona-card")).to_have_count(2)
    screenshot(page, f"new-chat-desktop{suffix}")

    phone = open_page(alice, path=f"/c/{made.id}/", viewport=PHONE, color_scheme=scheme)
    expect(phone.locator(".codeblock")).to_be_visible()
    expect(phone.locator("#socket-status")).to_have_attribute("data-state", "connected")
    # Nothing sticks out sideways at 375 px.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(phone.get_by_role("navigation", name="Conversation list")).to_be_hidden()
    screenshot(phone, f"chat-phone{suffix}")
    open_list = phone.get_by_role("button", name="Open conversation list")
    open_list.click()
    expect(open_list).to_have_attribute("aria-expanded", "true")
    expect(phone.get_by_role("navigation", name="Conversation list")).to_be_visible()
    screenshot(phone, f"sidebar-phone{suffix}")
    phone.keyboard.press("Escape")
    expect(phone.get_by_role("navigation", name="Conversation list")).to_be_hidden()
