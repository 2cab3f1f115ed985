"""Shares in Django's admin: staff find a link by its conversation or owner and revoke it;
nobody else gets in, and nobody writes a snapshot there."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from sharing.models import Share
from tests.sharing.conftest import Branched, branched_chat, error_of, logged_in, share_path

pytestmark = pytest.mark.django_db

User = get_user_model()
CHANGELIST = "admin:sharing_share_changelist"


@pytest.fixture
def staff(alice: Any) -> Client:
    admin_user = User.objects.create_superuser("root", "root@example.org", None)
    return logged_in(admin_user)


def shared_token(owner: Any, chat: Any) -> str:
    answer = logged_in(owner).post(share_path(chat))
    assert answer.status_code == 201
    token: str = answer.json()["token"]
    return token


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_staff_see_each_share_with_its_conversation_owner_and_link(
    staff: Client, alice: Any, bob: Any, branched: Branched, persona: Any
) -> None:
    token = shared_token(alice, branched.chat)
    other = branched_chat(bob, persona, title="Bob's garden")
    shared_token(bob, other.chat)

    page = staff.get(reverse(CHANGELIST))

    assert page.status_code == 200
    html = page.content.decode()
    assert "Pets" in html and "Bob&#x27;s garden" in html
    assert f'href="/s/{token}/"' in html
    assert 'rel="noreferrer"' in html
    found = staff.get(reverse(CHANGELIST), {"q": "garden"}).content.decode()
    assert "Bob&#x27;s garden" in found and f"/s/{token}/" not in found


def test_staff_read_a_snapshot_but_cannot_add_or_change_one(
    staff: Client, alice: Any, branched: Branched
) -> None:
    shared_token(alice, branched.chat)
    share = Share.objects.get()

    detail = staff.get(reverse("admin:sharing_share_change", args=[share.pk]))

    assert detail.status_code == 200
    assert "Lions roar." in detail.content.decode()
    assert staff.get(reverse("admin:sharing_share_add")).status_code == 403
    staff.post(
        reverse("admin:sharing_share_change", args=[share.pk]),
        {"snapshot": '{"title": "forged", "messages": []}'},
    )
    share.refresh_from_db()
    assert share.snapshot["title"] == "Pets"


def test_the_revoke_action_makes_the_links_404(
    staff: Client, alice: Any, bob: Any, branched: Branched, persona: Any
) -> None:
    token = shared_token(alice, branched.chat)
    kept = shared_token(alice, branched_chat(alice, persona, title="Kept").chat)
    share = Share.objects.get(token=token)

    answer = staff.post(
        reverse(CHANGELIST),
        {"action": "revoke", "_selected_action": [share.pk]},
        follow=True,
    )

    assert answer.status_code == 200
    assert messages_of(answer) == ["Revoked 1 link(s): they answer “not found” now."]
    reader = logged_in(bob)
    assert error_of(reader.get(f"/api/shares/{token}/")) == (404, "not_found")
    assert reader.get(f"/s/{token}/").status_code == 404
    assert reader.get(f"/api/shares/{kept}/").status_code == 200
    # Alice sees it is no longer shared, and may share it again under a new link.
    owner = logged_in(alice)
    assert error_of(owner.get(share_path(branched.chat))) == (404, "not_found")
    assert shared_token(alice, branched.chat) != token


def test_deleting_a_share_in_admin_revokes_it(
    staff: Client, alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)
    share = Share.objects.get()

    answer = staff.post(
        reverse("admin:sharing_share_delete", args=[share.pk]), {"post": "yes"}, follow=True
    )

    assert answer.status_code == 200
    assert error_of(logged_in(bob).get(f"/api/shares/{token}/")) == (404, "not_found")


def test_nobody_but_staff_with_the_permission_reaches_shares(
    alice: Any, bob: Any, branched: Branched
) -> None:
    token = shared_token(alice, branched.chat)
    share = Share.objects.get()
    urls = [
        reverse(CHANGELIST),
        reverse("admin:sharing_share_change", args=[share.pk]),
        reverse("admin:sharing_share_delete", args=[share.pk]),
    ]
    helper = User.objects.create_user("helper", password="x", is_staff=True)

    for client in (Client(), logged_in(alice), logged_in(helper)):
        for url in urls:
            answer = client.get(url)
            assert answer.status_code in (302, 403), url
            assert token not in answer.content.decode()
        client.post(urls[0], {"action": "revoke", "_selected_action": [share.pk]})
    assert Share.objects.filter(pk=share.pk).exists()

    # Viewing is not revoking: staff who may only view see no revoke action.
    helper.user_permissions.add(Permission.objects.get(codename="view_share"))
    viewer = logged_in(helper)
    page = viewer.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert 'value="revoke"' not in page.content.decode()
    viewer.post(urls[0], {"action": "revoke", "_selected_action": [share.pk]})
    assert logged_in(bob).get(f"/api/shares/{token}/").status_code == 200
