"""Login, signup, logout and the profile page."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Profile
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_chat_page_needs_login() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_signup_logs_in_and_lands_on_the_chat() -> None:
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"username": "dora", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b'id="messages"' in page.content
    assert Profile.objects.filter(user__username="dora").exists()


def test_signup_can_be_switched_off(settings: Any) -> None:
    settings.ALLOW_SIGNUP = False
    client = Client()
    page = client.get("/accounts/signup/")
    assert page.status_code == 404
    assert b"Sign-up is closed" in page.content
    client.post(
        "/accounts/signup/", {"username": "eve", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert not get_user_model().objects.filter(username="eve").exists()
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content


def test_login_then_logout_by_post_only(alice: Any) -> None:
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response["Location"] == "/"
    assert client.get("/accounts/logout/").status_code == 405, "a link cannot log you out"
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_profile_saves_display_name_and_about(alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    assert client.get("/accounts/profile/").status_code == 200
    response = client.post(
        "/accounts/profile/", {"display_name": "Ally", "about": "Writes Go at work."}
    )
    assert response.status_code == 302
    profile = Profile.objects.get(user=alice)
    assert (profile.display_name, profile.about) == ("Ally", "Writes Go at work.")
    assert "Ally" in client.get("/").content.decode()


def test_profile_needs_login() -> None:
    response = Client().get("/accounts/profile/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_pages_forbid_inline_script(alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    for path in ("/", "/accounts/profile/"):
        html = client.get(path).content.decode()
        assert "script-src 'self'" in html
        assert "<script>" not in html
    assert "script-src 'self'" in Client().get("/accounts/login/").content.decode()
