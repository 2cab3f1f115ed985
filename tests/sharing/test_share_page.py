"""The share as a page (/s/<token>/): who may open it, that it is noindex, that it shows
nothing of the owner, and that hostile titles and messages reach the browser only as data.
The HTML is read back with Python's HTML parser, as a browser would tokenize it."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from conversations.models import Conversation
from conversations.services import message_append
from tests.sharing.conftest import ALICE_MARKERS, Branched, logged_in, share_path

pytestmark = pytest.mark.django_db

HOSTILE = [
    "<script>alert(1)</script>",
    "</script><img src=x onerror=alert(1)>",
    "<!-- <script> -->",
]


class Parsed(HTMLParser):
    """The elements and texts a browser's tokenizer finds in the page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, str] = {}
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self._open.append((tag, attributes))
        if tag == "script":
            self.scripts.append((attributes, ""))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if not self._open:
            return
        tag, attributes = self._open[-1]
        if tag == "script":
            self.scripts[-1] = (self.scripts[-1][0], self.scripts[-1][1] + data)
        key = f"{tag}#{attributes.get('id') or ''}"
        self.texts[key] = self.texts.get(key, "") + data

    def meta(self, name: str) -> str | None:
        for tag, attributes in self.tags:
            if tag == "meta" and attributes.get("name") == name:
                return attributes.get("content")
        return None


def shared_token(owner: Any, chat: Conversation) -> str:
    answer = logged_in(owner).post(share_path(chat))
    assert answer.status_code == 201
    token: str = answer.json()["token"]
    return token


def page(client: Client, token: str) -> Any:
    return client.get(f"/s/{token}/")


def test_a_signed_in_reader_sees_the_page_with_its_data_and_a_continue_button(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)

    answer = page(logged_in(bob), token)

    assert answer.status_code == 200
    html = Parsed(answer.content.decode())
    assert html.texts["h1#share-title"] == "Pets"
    assert html.texts["span#share-persona"] == "Assistant"
    assert html.texts["title#"] == "Pets · Persona Chat"
    data = json.loads(html.texts["script#share-data"])
    assert [m["content"] for m in data["messages"]] == [
        "Tell me about cats",
        "Cats purr.",
        "And lions?",
        "Lions roar.",
    ]
    fork = next(a for tag, a in html.tags if a.get("id") == "fork")
    assert fork["data-fork-url"] == f"/api/shares/{token}/fork/"
    assert "zebra" not in answer.content.decode().lower()


def test_the_page_is_marked_noindex(alice: Any, bob: Any, branched: Branched) -> None:
    token = shared_token(alice, branched.chat)

    answer = page(logged_in(bob), token)

    robots = Parsed(answer.content.decode()).meta("robots")
    assert robots is not None and robots.startswith("noindex")
    assert "noindex" in answer["X-Robots-Tag"]


def test_the_page_shows_nothing_of_the_owner(
    marked_alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(marked_alice, branched.chat)

    html = page(logged_in(bob), token).content.decode()

    for marker in (*ALICE_MARKERS.values(), "AliceFirst-2p6r", "AliceLast-3t9v"):
        assert marker not in html
    assert str(branched.chat.id) not in html
    assert str(branched.new.id) not in html


def test_signed_out_the_page_sends_to_the_login_page_and_back(
    alice: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)

    answer = page(Client(), token)

    assert answer.status_code == 302
    assert answer["Location"] == f"{django_settings.LOGIN_URL}?next=/s/{token}/"
    assert "Cats" not in answer.content.decode()


def test_signed_out_an_unknown_link_also_goes_to_the_login_page(alice: Any) -> None:
    # Nothing tells a stranger which links exist.
    answer = page(Client(), "x" * 43)

    assert answer.status_code == 302
    assert answer["Location"].startswith(django_settings.LOGIN_URL)


def test_with_share_public_anyone_reads_the_page_and_is_asked_to_sign_in_to_continue(
    alice: Any, branched: Branched, settings: Any
) -> None:
    settings.SHARE_PUBLIC = True
    token = shared_token(alice, branched.chat)

    answer = page(Client(), token)

    assert answer.status_code == 200
    html = Parsed(answer.content.decode())
    assert json.loads(html.texts["script#share-data"])["title"] == "Pets"
    sign_in = next(a for tag, a in html.tags if a.get("id") == "sign-in")
    assert sign_in["href"] == f"{django_settings.LOGIN_URL}?next=/s/{token}/"
    assert not any(a.get("id") == "fork" for _, a in html.tags)
    assert "noindex" in (html.meta("robots") or "")


def test_unknown_revoked_and_malformed_links_show_the_same_not_found_page(
    alice: Any, bob: Any, branched: Branched
) -> None:
    client = logged_in(alice)
    token = shared_token(alice, branched.chat)
    reader = logged_in(bob)
    unknown = page(reader, "x" * 43)
    client.delete(share_path(branched.chat))

    answers = [
        page(reader, t)
        for t in (token, token[:42], token + "A", "%2e%2e", "é" * 43, "", "a%2Fb", f"{token}/x")
    ]

    assert unknown.status_code == 404
    assert "This link does not work" in unknown.content.decode()
    assert "noindex" in (Parsed(unknown.content.decode()).meta("robots") or "")
    for answer in answers:
        assert answer.status_code == 404
        # The same page, but for the CSRF token the base template carries.
        assert strip_csrf(answer.content) == strip_csrf(unknown.content)


def test_the_page_answers_only_get_and_head_and_those_too_are_noindex(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)

    answer = logged_in(bob, csrf=True).post(f"/s/{token}/")

    assert answer.status_code == 405
    assert answer["Allow"] == "GET, HEAD"
    assert "noindex" in answer["X-Robots-Tag"]
    # A link preview asks with HEAD first: the page's own answer, without its body.
    page = logged_in(bob).get(f"/s/{token}/")
    head = logged_in(bob).head(f"/s/{token}/")
    assert (head.status_code, head.content) == (200, b"")
    for header in ("Content-Type", "X-Robots-Tag", "Cache-Control", "Referrer-Policy"):
        assert head[header] == page[header]
    assert logged_in(bob).head("/s/" + "x" * 43 + "/").status_code == 404


def strip_csrf(content: bytes) -> str:
    html = Parsed(content.decode())
    text = content.decode()
    csrf = html.meta("csrf-token") or ""
    return text.replace(csrf, "") if csrf else text


def test_hostile_titles_and_messages_reach_the_page_only_as_data(
    alice: Any, bob: Any, persona: Any
) -> None:
    title = "".join(HOSTILE)
    chat = Conversation.objects.create(owner=alice, persona=persona, title=title)
    for content in HOSTILE:
        message_append(conversation=chat, role="user", content=content)
        message_append(conversation=chat, role="assistant", content=f"Echo: {content}")
    token = shared_token(alice, chat)

    source = page(logged_in(bob), token).content.decode()

    html = Parsed(source)
    # Every script is one of the page's own files, or the data block: none was injected.
    inline = [(a, body) for a, body in html.scripts if not a.get("src")]
    assert [a.get("id") for a, _ in inline] == ["share-data"]
    assert inline[0][0].get("type") == "application/json"
    assert [a.get("id") for tag, a in html.tags if tag == "img"] == ["lightbox-image"]
    assert not any("onerror" in attributes for _, attributes in html.tags)
    assert source.count("</script>") == len(html.scripts)
    # The words themselves arrive intact, for the page's sanitizer to draw as text.
    data = json.loads(inline[0][1])
    assert data["title"] == title
    assert [m["content"] for m in data["messages"]] == [
        text for content in HOSTILE for text in (content, f"Echo: {content}")
    ]
    assert html.texts["h1#share-title"] == title
    assert html.texts["title#"] == f"{title} · Persona Chat"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in source


@pytest.mark.parametrize(("public", "who"), [(False, "Signed-in people"), (True, "Anyone")])
def test_the_share_dialog_says_who_will_see_the_link(
    alice: Any, persona: Any, settings: Any, public: bool, who: str
) -> None:
    settings.SHARE_PUBLIC = public

    chat_page = logged_in(alice).get("/")

    assert f"{who} with the link will see the messages" in chat_page.content.decode()
