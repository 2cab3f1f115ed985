"""The reply streams live, can be stopped, and survives a reload and a network blip."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from playwright.sync_api import Locator, Page, Route, WebSocketRoute, expect

from conversations.db import LOOP_APPLICATION_NAME
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.browser.conftest import SERVER_APPLICATION_NAME, shown, visible_text
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CONVERSATION_URL = re.compile(r"/c/[0-9a-f-]{36}/$")


def send(page: Page, text: str) -> Locator:
    """Type and send with Enter; return the reply that answers it."""
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    reply = page.locator("article[data-role=assistant]").last
    expect(reply).to_be_attached()
    return reply


def snapshot(reply: Locator) -> tuple[str, str]:
    """Status and visible text read in one go, so they describe the same moment."""
    status, text = reply.evaluate(
        "node => [node.dataset.status, node.querySelector('.msg-body').innerText]"
    )
    return status, " ".join(text.split())


def wait_for(page: Page, probe: Callable[[], Any], timeout_s: float = 10) -> Any:
    """Poll `probe` while Playwright delivers events, until it returns something truthy."""
    for _ in range(int(timeout_s * 20)):
        if result := probe():
            return result
        page.wait_for_timeout(50)
    raise AssertionError("timed out waiting")


def saved_reply() -> Message:
    return Message.objects.get(role=Message.Role.ASSISTANT)


def reply_under_way(page: Page, proxy: Callable[[WebSocketRoute], None], question: str) -> Locator:
    """Every socket of the page through `proxy`; the page open, and a reply to `question`
    streaming."""
    page.route_web_socket(re.compile(r"/ws/chat/$"), proxy)
    page.goto("/")
    expect(page.locator("#socket-status")).to_have_attribute("data-state", "connected")
    reply = send(page, question)
    expect(reply.locator(".msg-body")).to_contain_text("Hello Alice")
    return reply


def blip(sockets: list[tuple[WebSocketRoute, WebSocketRoute]]) -> None:
    """Cut the page's newest socket at both ends, as a network blip would."""
    client_side, server_side = sockets[-1]
    server_side.close()
    client_side.close(code=4000, reason="blip")


def test_signup_profile_persona_and_streamed_reply(
    open_page: Callable[..., Page], persona: Any, pirate: Any
) -> None:
    page = open_page(path="/accounts/signup/")
    page.locator("#id_username").fill("carol")
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Who would you like to talk to?")).to_be_visible()

    page.get_by_role("link", name="carol").click()
    page.get_by_label("Display name").fill("Captain Carol")
    page.get_by_label("About you").fill("I sail small boats and like short answers.")
    page.get_by_role("button", name="Save profile").click()
    expect(page.get_by_role("status")).to_contain_text("Profile saved")
    page.get_by_role("link", name="Back to chat").click()

    card = page.locator(".persona-card", has_text="Captain Redbeard")
    expect(card).to_contain_text("Answers in pirate speak.")
    expect(card.locator(".persona-avatar")).to_have_text("🏴‍☠️")
    card.click()
    expect(card.get_by_role("radio")).to_be_checked()

    reply = send(page, "How do I tie a bowline?")
    expect(reply.locator(".msg-body")).to_contain_text("Hello Captain Carol")
    status, partial = snapshot(reply)
    assert status == "streaming", "the text was read while the reply was still streaming"
    expect(page.get_by_role("button", name="Stop")).to_be_visible()

    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    saved = saved_reply()
    final = shown(page, "article[data-role=assistant] .msg-body")
    assert final == visible_text(saved.content)
    assert len(partial) < len(final)
    assert "Captain Carol" in saved.content, "the profile's display name reached the model"
    # Markdown rendered as it streamed: the demo's bullet list is a real list.
    expect(reply.locator("li strong").first).to_be_visible()

    conversation = Conversation.objects.get()
    assert conversation.persona.slug == "pirate"
    assert conversation.owner.username == "carol"
    expect(page).to_have_url(CONVERSATION_URL)
    assert str(conversation.id) in page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("How do I tie a bowline?")
    expect(page.locator("#conversation-list li")).to_have_count(1)
    expect(page.locator("#conversation-list li")).to_contain_text("How do I tie a bowline?")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_stop_mid_reply_keeps_the_partial_text_marked_stopped(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    reply = send(page, "Tell me everything about lighthouses.")
    expect(reply.locator(".msg-body")).to_contain_text("Hello Alice")
    page.get_by_role("button", name="Stop").click()

    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.locator(".msg-status")).to_have_text("Stopped")
    saved = saved_reply()
    assert saved.status == Message.Status.STOPPED
    assert saved.content.startswith("Hello Alice")
    assert len(saved.content.split()) < 80, "stopped before the end"
    assert shown(page, "article[data-role=assistant] .msg-body") == visible_text(saved.content)
    expect(page.get_by_role("button", name="Send")).to_be_visible()

    # A reload shows the same stopped reply, from the database this time.
    page.reload()
    reply = page.locator("article[data-role=assistant]")
    expect(reply).to_have_attribute("data-status", "stopped")
    assert shown(page, "article[data-role=assistant] .msg-body") == visible_text(saved.content)


def test_reload_mid_reply_resumes_with_no_gap_and_no_duplicate(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice)
    reply = send(page, "Why does the sea have tides?")
    expect(reply.locator(".msg-body")).to_contain_text("Hello Alice")
    expect(page).to_have_url(CONVERSATION_URL)

    page.reload()
    reply = page.locator("article[data-role=assistant]")
    # Still generating after the reload: the page follows it live via chat.resume.
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)

    saved = saved_reply()
    final = shown(page, "article[data-role=assistant] .msg-body")
    assert final == visible_text(saved.content)
    assert final.count("Hello Alice") == 1
    expect(page.locator("article[data-role=user]")).to_have_count(1)
    expect(reply).to_have_count(1)


def test_second_tab_shows_the_message_and_the_live_reply(
    new_context: Callable[..., Any], alice: Any, persona: Any
) -> None:
    context = new_context(alice)
    first = context.new_page()
    first.goto("/")
    send(first, "First message, to open a conversation")
    expect(first.locator("article[data-role=assistant]")).to_have_attribute(
        "data-status", "complete", timeout=20_000
    )
    second = context.new_page()
    second.goto(first.url)
    expect(second.locator("article[data-role=assistant]")).to_have_count(1)

    send(first, "Asked in the first tab")

    mirror = second.locator("article[data-role=assistant]").last
    expect(second.locator("article[data-role=user]").last).to_have_text(
        re.compile("Asked in the first tab")
    )
    expect(mirror).to_have_attribute("data-status", "streaming")
    expect(mirror).to_have_attribute("data-status", "complete", timeout=20_000)
    original = first.locator("article[data-role=assistant]").last
    expect(original).to_have_attribute("data-status", "complete", timeout=20_000)
    assert shown(second, "article[data-role=assistant]:last-of-type .msg-body") == shown(
        first, "article[data-role=assistant]:last-of-type .msg-body"
    )
    expect(second.locator("article[data-role=user]")).to_have_count(2)


def test_socket_drop_mid_reply_reconnects_and_resumes(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    page = open_page(alice, path=None)
    # Every socket goes through Playwright's proxy so the test can cut one mid-reply.
    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    sent: list[list[dict[str, Any]]] = []

    def proxy(route: WebSocketRoute) -> None:
        server = route.connect_to_server()
        frames: list[dict[str, Any]] = []

        def forward(message: str | bytes) -> None:
            frames.append(json.loads(message))
            server.send(message)

        route.on_message(forward)
        sockets.append((route, server))
        sent.append(frames)

    reply = reply_under_way(page, proxy, "What is a network blip?")
    status = page.locator("#socket-status")

    blip(sockets)
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_have_attribute("data-state", "connected")
    assert len(sockets) == 2, "the page opened a new socket by itself"
    resumes = wait_for(page, lambda: [f for f in sent[1] if f["type"] == "chat.resume"])
    resume = resumes[0]
    shown_seq = int(reply.get_attribute("data-seq") or 0)
    assert 0 < resume["after_seq"] <= shown_seq, "asked only for what it had not seen"
    # Resumed after the last seq it had: the reply goes on, with nothing lost or repeated.
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    saved = saved_reply()
    final = shown(page, "article[data-role=assistant] .msg-body")
    assert final == visible_text(saved.content)
    assert final.count("Hello Alice") == 1

    # The browser going offline shows as such, and coming back shows connected again.
    page.context.set_offline(True)
    expect(status).to_have_attribute("data-state", "offline")
    expect(status).to_contain_text("Offline")
    page.context.set_offline(False)
    expect(status).to_have_attribute("data-state", "connected", timeout=20_000)


@contextlib.contextmanager
def database_closed_to_the_server() -> Iterator[Callable[[], None]]:
    """The test database refuses new connections and the server's are cut (this process's
    own, pooled, stay): the server sees PostgreSQL go away. Yields `reopen`; reopened on the
    way out. PostgreSQL takes the change from a session in another database only."""
    settings_dict = connection.settings_dict
    name = connection.ops.quote_name(settings_dict["NAME"])
    admin = psycopg.connect(
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    reopened = False

    def reopen() -> None:
        nonlocal reopened
        if not reopened:
            reopened = True
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

    with admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name IN (%s, %s)",
            [settings_dict["NAME"], SERVER_APPLICATION_NAME, LOOP_APPLICATION_NAME],
        )
        try:
            yield reopen
        finally:
            reopen()


def test_resume_refused_while_the_database_is_away_is_asked_again_by_itself(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    """The socket comes back while PostgreSQL is away: the page's resume is refused as
    `unavailable`. The page says so, asks again by itself, and once the database is back
    shows the reply as saved, with no reload by the user."""
    page = open_page(alice, path=None)
    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    resumes: list[list[str]] = []
    held: list[str] = []  # the first resume of the new socket, until the database is away

    def proxy(route: WebSocketRoute) -> None:
        server = route.connect_to_server()
        mine: list[str] = []

        def forward(message: str | bytes) -> None:
            if json.loads(message)["type"] == "chat.resume":
                mine.append(str(message))
                if len(sockets) > 1 and not held:
                    held.append(str(message))
                    return
            server.send(message)

        route.on_message(forward)
        sockets.append((route, server))
        resumes.append(mine)

    reply = reply_under_way(page, proxy, "What if the database naps?")

    blip(sockets)
    expect(page.locator("#socket-status")).to_have_attribute("data-state", "connected")
    wait_for(page, lambda: held)
    # Unfollowed, the reply goes on to its end and is saved; only then does PostgreSQL go.
    wait_for(page, Message.objects.filter(role=Message.Role.ASSISTANT).exists, timeout_s=20)
    notice = page.locator("#composer-error")
    with database_closed_to_the_server() as reopen:
        sockets[-1][1].send(held[0])
        expect(notice).to_contain_text("trying again", timeout=20_000)
        expect(reply).to_have_attribute("data-status", "streaming")
        reopen()
        expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
    assert len(resumes[-1]) >= 2, "the page asked again by itself"
    assert shown(page, "article[data-role=assistant] .msg-body") == visible_text(
        saved_reply().content
    )
    expect(notice).to_be_hidden()


def test_conversation_that_fails_to_load_is_loaded_again_by_itself(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    """The conversation's load is answered 503 (PostgreSQL away): the page says so, asks
    again by itself, and once the database is back shows the conversation and streams into
    it. Before, it kept the error and ignored every frame of that conversation."""
    chat = Conversation.objects.create(owner=alice, persona=persona, title="Naps")
    message_append(conversation=chat, role=Message.Role.USER, content="Hello there")
    message_append(conversation=chat, role=Message.Role.ASSISTANT, content="Hi Alice, ahoy")
    page = open_page(alice, path=None)
    held: list[Route] = []  # the first load, until the database is away
    loads: list[str] = []

    def hold_first(route: Route) -> None:
        loads.append(route.request.url)
        if not held:
            held.append(route)
            return
        route.continue_()

    page.route(re.compile(rf"/api/conversations/{chat.id}/$"), hold_first)
    page.goto(f"/c/{chat.id}/")
    expect(page.locator("#socket-status")).to_have_attribute("data-state", "connected")
    wait_for(page, lambda: held)
    notice = page.locator("#composer-error")
    with database_closed_to_the_server() as reopen:
        held[0].continue_()
        expect(notice).to_contain_text("trying again", timeout=20_000)
        reopen()
        expect(page.locator("article[data-role=assistant]")).to_contain_text(
            "Hi Alice, ahoy", timeout=30_000
        )
    assert len(loads) >= 2, "the page asked again by itself"
    expect(notice).to_be_hidden()
    # The conversation is live again: a message sent there is answered in place.
    reply = send(page, "Still there?")
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(page.locator("article[data-role=user]")).to_have_count(2)


def test_keyboard_sending_and_auto_scroll_that_yields_to_the_reader(
    open_page: Callable[..., Page], alice: Any, persona: Any
) -> None:
    long_chat = Conversation.objects.create(owner=alice, persona=persona, title="Long one")
    for index in range(30):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        message_append(conversation=long_chat, role=role, content=f"Message {index}")
    page = open_page(alice, path=f"/c/{long_chat.id}/", viewport={"width": 1280, "height": 600})
    expect(page.locator("article")).to_have_count(30)
    scroller = page.locator("#scroller")
    at_bottom = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 4"
    assert scroller.evaluate(at_bottom), "opens at the latest message"

    box = page.get_by_label("Message", exact=True)
    box.focus()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert box.input_value() == "first line\nsecond line", "Shift+Enter adds a line"
    page.keyboard.press("Enter")
    expect(box).to_have_value("")
    expect(page.locator("article[data-role=user] .msg-body").last).to_have_text(
        "first line\nsecond line"
    )
    reply = page.locator("article[data-role=assistant]").last
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reply.locator(".msg-body")).to_contain_text("Hello Alice")
    assert scroller.evaluate(at_bottom), "follows the reply while the reader is at the bottom"

    # The reader scrolls up: the page stops following and offers a way back.
    page.mouse.move(640, 300)
    page.mouse.wheel(0, -400)
    expect(page.get_by_role("button", name="↓ Latest")).to_be_visible()
    top = scroller.evaluate("el => el.scrollTop")
    page.wait_for_timeout(400)  # more text arrives meanwhile
    assert reply.get_attribute("data-status") == "streaming"
    assert scroller.evaluate("el => el.scrollTop") == top, "did not yank the reader down"

    page.get_by_role("button", name="↓ Latest").click()
    assert scroller.evaluate(at_bottom)
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    assert scroller.evaluate(at_bottom), "following again after jumping to the latest"
