"""Admin: how each persona's replies are rated, what users wrote, and messages by rating."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def staff(alice: Any) -> Client:
    admin_user = User.objects.create_superuser("root", "root@example.org", None)
    client = Client()
    client.force_login(admin_user)
    return client


def rated_reply(
    owner: Any,
    persona: Persona,
    *,
    rating: int | None,
    days_ago: float = 0,
    comment: str = "",
    title: str = "",
) -> Message:
    """A conversation of one question and one reply, the reply rated `days_ago` days ago."""
    chat = Conversation.objects.create(owner=owner, persona=persona, title=title)
    message_append(conversation=chat, role=Message.Role.USER, content=f"question for {title}")
    reply = message_append(
        conversation=chat, role=Message.Role.ASSISTANT, content=f"answer for {title}"
    )
    if rating is not None:
        rated_at = timezone.now() - timedelta(days=days_ago)
        Message.objects.filter(pk=reply.pk).update(
            rating=rating, rating_comment=comment, rated_at=rated_at
        )
    reply.refresh_from_db()
    return reply


def persona_rows(response: Any) -> dict[str, Any]:
    return {p.slug: p for p in response.context["cl"].result_list}


def test_persona_list_shows_thumbs_and_ratio_over_7_and_30_days(
    staff: Client, alice: Any, bob: Any, persona: Persona, pirate: Persona
) -> None:
    # Last week: 3 up, 1 down. Earlier this month: 1 up, 3 down. Older: ignored.
    for owner, rating, days in [
        (alice, 1, 1),
        (alice, 1, 2),
        (bob, 1, 6.5),
        (alice, -1, 3),
        (bob, 1, 10),
        (alice, -1, 12),
        (alice, -1, 20),
        (bob, -1, 29),
        (alice, -1, 45),
        (alice, 1, 60),
    ]:
        rated_reply(owner, persona, rating=rating, days_ago=days)
    rated_reply(alice, pirate, rating=None)  # a reply nobody rated

    response = staff.get(reverse("admin:personas_persona_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Ratings, 7 days" in html
    assert "Ratings, 30 days" in html
    assert "3 👍 / 1 👎 · 75% 👍" in html
    assert "4 👍 / 4 👎 · 50% 👍" in html
    rows = persona_rows(response)
    assert (rows["assistant"].up_7, rows["assistant"].down_7) == (3, 1)
    assert (rows["assistant"].up_30, rows["assistant"].down_30) == (4, 4)
    # No ratings is not 0%: the pirate's row says so.
    assert (rows["pirate"].up_30, rows["pirate"].down_30) == (0, 0)
    assert html.count("no ratings") == 2
    # Counting ratings did not disturb the conversation counts beside them.
    assert rows["assistant"].conversations_total == 10
    assert rows["pirate"].conversations_total == 1


def test_persona_list_counts_in_the_list_query_not_one_query_per_row(
    staff: Client, alice: Any, persona: Persona
) -> None:
    def list_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(reverse("admin:personas_persona_changelist")).status_code == 200
        return len(queries)

    rated_reply(alice, persona, rating=1)
    few = list_queries()
    for i in range(5):
        extra = Persona.objects.create(slug=f"extra-{i}", name=f"Extra {i}", order=2 + i)
        rated_reply(alice, extra, rating=-1)
        rated_reply(alice, extra, rating=1, days_ago=15)

    assert list_queries() == few
    assert (
        staff.get(reverse("admin:personas_persona_changelist"))
        .content.decode()
        .count("0 👍 / 1 👎 · 0% 👍")
        == 5
    )


def test_persona_page_shows_ratings_and_the_latest_comments_linked_to_their_chats(
    staff: Client, alice: Any, bob: Any, persona: Persona, pirate: Persona
) -> None:
    old = rated_reply(alice, persona, rating=-1, days_ago=40, comment="the oldest complaint")
    for i in range(10):
        rated_reply(bob, persona, rating=1, days_ago=5 + i / 10, comment=f"helpful number {i}")
    newest = rated_reply(
        alice,
        persona,
        rating=-1,
        days_ago=0.5,
        comment="<script>alert('x')</script> wrong & rude",
        title="Tax <b>question</b>",
    )
    rated_reply(alice, persona, rating=1, days_ago=0.1)  # a thumb without a comment
    rated_reply(alice, pirate, rating=-1, comment="arr, the pirate's own")

    response = staff.get(reverse("admin:personas_persona_change", args=[persona.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    # 7 and 30 days alike: ten helpful, the bare thumb, one complaint (the old one is past 30).
    assert html.count("11 👍 / 1 👎 · 92% 👍") == 2
    # The newest first, escaped: the user's text is shown, never run.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; wrong &amp; rude" in html
    assert "<script>alert" not in html
    link = reverse("admin:conversations_conversation_change", args=[newest.conversation_id])
    assert f'<a href="{link}">Tax &lt;b&gt;question&lt;/b&gt;</a>' in html
    assert html.index("wrong &amp; rude") < html.index("helpful number 0")
    assert html.index("helpful number 0") < html.index("helpful number 8")
    # Ten at most: the eleventh newest is left off; other personas' comments never show.
    assert "helpful number 9" not in html
    assert old.rating_comment not in html
    assert "arr, the pirate" not in html
    for i in range(9):
        chat = Message.objects.get(rating_comment=f"helpful number {i}").conversation_id
        assert reverse("admin:conversations_conversation_change", args=[chat]) in html


def test_persona_page_without_ratings_says_so(staff: Client, pirate: Persona) -> None:
    html = staff.get(reverse("admin:personas_persona_change", args=[pirate.pk])).content.decode()
    assert html.count("no ratings") == 2
    assert "none yet" in html
    add = staff.get(reverse("admin:personas_persona_add"))
    assert add.status_code == 200


def test_messages_filter_by_rating_and_show_rating_and_comment(
    staff: Client, alice: Any, bob: Any, persona: Persona
) -> None:
    liked = rated_reply(alice, persona, rating=1, comment="spot on")
    disliked = rated_reply(bob, persona, rating=-1, comment="made up a <b>source</b>")
    unrated = rated_reply(alice, persona, rating=None)
    url = reverse("admin:conversations_message_changelist")

    def shown(query: str) -> set[Any]:
        response = staff.get(url + query)
        assert response.status_code == 200
        return {m.pk for m in response.context["cl"].result_list}

    assert shown("?rating=up") == {liked.pk}
    assert shown("?rating=down") == {disliked.pk}
    # Unrated replies only: a user's own message is not something to rate.
    assert shown("?rating=unrated") == {unrated.pk}
    assert len(shown("")) == 6

    html = staff.get(url).content.decode()
    for choice in ("👍", "👎", "unrated replies"):
        assert f">{choice}</a>" in html
    assert "spot on" in html
    assert "made up a &lt;b&gt;source&lt;/b&gt;" in html

    page = staff.get(reverse("admin:conversations_message_change", args=[disliked.pk]))
    detail = page.content.decode()
    assert "made up a &lt;b&gt;source&lt;/b&gt;" in detail
    assert "Rated at" in detail
    # The message it answers, one click away.
    assert disliked.parent_id is not None
    assert reverse("admin:conversations_message_change", args=[disliked.parent_id]) in detail


def test_conversation_page_names_the_active_leaf(
    staff: Client, alice: Any, persona: Persona
) -> None:
    reply = rated_reply(alice, persona, rating=None, title="Leafy")
    html = staff.get(
        reverse("admin:conversations_conversation_change", args=[reply.conversation_id])
    ).content.decode()
    assert "Current leaf" in html
    assert reverse("admin:conversations_message_change", args=[reply.pk]) in html
