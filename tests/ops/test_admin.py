"""Django admin: staff can run personas and read conversations; nobody else gets in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from accounts.models import Profile
from conversations.models import Conversation, Message
from personas.models import Persona

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def staff(alice: Any) -> Client:
    """An admin: a staff superuser (the admin's own permissions are tested by Django)."""
    admin_user = User.objects.create_superuser("root", "root@example.org", None)
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def chat(alice: Any, persona: Persona) -> Conversation:
    conversation = Conversation.objects.create(owner=alice, persona=persona, title="Sourdough")
    question = Message.objects.create(
        conversation=conversation, role="user", content="How long should the dough rise?"
    )
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="About four hours at room temperature.",
        parent=question,
    )
    return conversation


def changelist_action(client: Client, action: str, personas: list[Persona]) -> Any:
    return client.post(
        reverse("admin:personas_persona_changelist"),
        {"action": action, "_selected_action": [p.pk for p in personas]},
        follow=True,
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_admin_refuses_a_signed_in_user_who_is_not_staff(alice: Any, chat: Conversation) -> None:
    client = Client()
    client.force_login(alice)
    for url in (
        reverse("admin:index"),
        reverse("admin:personas_persona_changelist"),
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:conversations_conversation_change", args=[chat.pk]),
        reverse("admin:auth_user_changelist"),
    ):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_persona_list_shows_what_an_admin_needs(
    staff: Client, persona: Persona, pirate: Persona, chat: Conversation
) -> None:
    Persona.objects.filter(pk=pirate.pk).update(provider="openai", model="gpt-4o-mini")
    response = staff.get(reverse("admin:personas_persona_changelist"))
    assert response.status_code == 200
    rows = {p.slug: p for p in response.context["cl"].result_list}
    assert rows["assistant"].conversations_total == 1
    assert rows["pirate"].conversations_total == 0
    page = response.content.decode()
    for text in ("💬", "Captain Redbeard", "gpt-4o-mini", "openai", "default"):
        assert text in page

    searched = staff.get(reverse("admin:personas_persona_changelist"), {"q": "pirate"})
    assert [p.slug for p in searched.context["cl"].result_list] == ["pirate"]
    filtered = staff.get(reverse("admin:personas_persona_changelist"), {"is_default__exact": "1"})
    assert [p.slug for p in filtered.context["cl"].result_list] == ["assistant"]


def test_persona_page_previews_the_full_prompt_as_data(staff: Client, persona: Persona) -> None:
    persona.system_prompt = "You are helpful. <script>alert('x')</script>"
    persona.save()
    response = staff.get(reverse("admin:personas_persona_change", args=[persona.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "System prompt as a user gets it" in page
    # The sample user's profile is part of the instruction, as in a real turn.
    assert "The user&#x27;s name is Sam." in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script>alert('x')</script>" not in page


def test_persona_slugs_are_validated(staff: Client, persona: Persona) -> None:
    form = {
        "name": "Bad slug",
        "slug": "Bad_Slug",
        "avatar": "🤖",
        "description": "",
        "order": "5",
        "system_prompt": "Hi.",
        "provider": "",
        "model": "",
        "temperature": "0.7",
        "is_active": "on",
    }
    response = staff.post(reverse("admin:personas_persona_add"), form)
    assert response.status_code == 200
    assert "Use lowercase letters, digits and single hyphens" in response.content.decode()
    assert not Persona.objects.filter(name="Bad slug").exists()

    taken = staff.post(reverse("admin:personas_persona_add"), {**form, "slug": "assistant"})
    assert taken.status_code == 200
    assert "already exists" in taken.content.decode()

    second_default = staff.post(
        reverse("admin:personas_persona_add"), {**form, "slug": "good-slug", "is_default": "on"}
    )
    assert "Only one persona can be the default." in second_default.content.decode()

    ok = staff.post(reverse("admin:personas_persona_add"), {**form, "slug": "good-slug"})
    assert ok.status_code == 302
    assert Persona.objects.get(slug="good-slug").name == "Bad slug"


def test_activate_deactivate_and_duplicate(
    staff: Client, persona: Persona, pirate: Persona
) -> None:
    response = changelist_action(staff, "deactivate", [persona, pirate])
    assert "1 persona(s) deactivated." in messages_of(response)
    assert any("it is the default persona" in m for m in messages_of(response))
    pirate.refresh_from_db()
    persona.refresh_from_db()
    assert (pirate.is_active, persona.is_active) == (False, True)

    response = changelist_action(staff, "activate", [pirate])
    assert "1 persona(s) activated." in messages_of(response)
    assert Persona.objects.get(pk=pirate.pk).is_active

    changelist_action(staff, "duplicate", [pirate])
    response = changelist_action(staff, "duplicate", [pirate])
    copies = Persona.objects.filter(slug__startswith="pirate-copy").order_by("slug")
    assert [c.slug for c in copies] == ["pirate-copy", "pirate-copy-2"]
    copy = copies[0]
    assert copy.system_prompt == pirate.system_prompt
    assert copy.name == "Captain Redbeard (copy)"
    assert (copy.is_active, copy.is_default) == (False, False)
    assert "Created 1 inactive copy: pirate-copy-2. Edit, then activate." in messages_of(response)


def test_deleting_a_persona_in_use_answers_with_a_message(
    staff: Client, persona: Persona, pirate: Persona, chat: Conversation
) -> None:
    delete_url = reverse("admin:personas_persona_delete", args=[persona.pk])
    response = staff.get(delete_url, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse(
        "admin:personas_persona_change", args=[persona.pk]
    )
    [message] = messages_of(response)
    assert message.startswith("Cannot delete Assistant (1 conversations)")
    assert "Deactivate it instead" in message

    posted = staff.post(delete_url, {"post": "yes"}, follow=True)
    assert posted.status_code == 200
    assert Persona.objects.filter(pk=persona.pk).exists()

    bulk = changelist_action(staff, "delete_selected", [persona, pirate])
    assert bulk.status_code == 200
    assert messages_of(bulk)[0].startswith("Cannot delete Assistant (1 conversations)")
    assert Persona.objects.count() == 2

    # A persona nobody uses goes through Django's usual confirmation.
    confirm = staff.get(reverse("admin:personas_persona_delete", args=[pirate.pk]))
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()
    staff.post(reverse("admin:personas_persona_delete", args=[pirate.pk]), {"post": "yes"})
    assert not Persona.objects.filter(pk=pirate.pk).exists()


def test_conversations_are_read_only_with_messages_inline(
    staff: Client, chat: Conversation, bob: Any, persona: Persona
) -> None:
    Conversation.objects.create(owner=bob, persona=persona, title="Bob's taxes")
    changelist = reverse("admin:conversations_conversation_changelist")

    by_user = staff.get(changelist, {"q": "alice"})
    assert [c.title for c in by_user.context["cl"].result_list] == ["Sourdough"]
    by_text = staff.get(changelist, {"q": "room temperature"})
    assert [c.title for c in by_text.context["cl"].result_list] == ["Sourdough"]
    assert by_text.context["cl"].result_list[0].messages_total == 2

    page = staff.get(reverse("admin:conversations_conversation_change", args=[chat.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "How long should the dough rise?" in text
    assert "About four hours at room temperature." in text
    assert 'name="_save"' not in text  # view only: nothing to save
    assert staff.get(reverse("admin:conversations_conversation_add")).status_code == 403

    messages = staff.get(reverse("admin:conversations_message_changelist"), {"q": "rise"})
    assert messages.status_code == 200
    assert [m.content for m in messages.context["cl"].result_list] == [
        "How long should the dough rise?"
    ]


def test_user_admin_edits_the_profile_inline(staff: Client, alice: Any) -> None:
    url = reverse("admin:auth_user_change", args=[alice.pk])
    page = staff.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "What the assistant may know about this user" in text
    assert 'name="profile-0-display_name" value="Alice"' in text

    # Adding a user has no inline: the profile is created by the signal, once.
    add = staff.get(reverse("admin:auth_user_add"))
    assert add.status_code == 200
    created = staff.post(
        reverse("admin:auth_user_add"),
        {
            "username": "carol",
            "password1": "a-long-enough-passphrase-7",
            "password2": "a-long-enough-passphrase-7",
            "usable_password": "true",
        },
    )
    assert created.status_code == 302, created.content.decode()[:2000]
    carol = User.objects.get(username="carol")
    assert Profile.objects.filter(user=carol).count() == 1

    listing = staff.get(reverse("admin:auth_user_changelist"), {"q": "Alice"})
    assert [u.username for u in listing.context["cl"].result_list] == ["alice"]
    assert staff.get(reverse("admin:accounts_profile_changelist")).status_code == 200
