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


STRICT = {
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
}


def policy(response: Any) -> set[str]:
    return {part.strip() for part in response["Content-Security-Policy"].split(";")}


def test_every_response_carries_the_strict_policy_header(alice: Any) -> None:
    user = Client()
    user.force_login(alice)
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root", "r@example.org", "x"))
    responses = {
        "chat page": user.get("/"),
        "profile": user.get("/accounts/profile/"),
        "login": Client().get("/accounts/login/"),
        "signup": Client().get("/accounts/signup/"),
        "JSON API": user.get("/api/personas/"),
        "not found": user.get("/no-such-page/"),
        "health": Client().get("/healthz"),
        "admin login": Client().get("/admin/login/"),
        "admin": staff.get("/admin/"),
        "admin change list": staff.get("/admin/auth/user/"),
    }
    for name, response in responses.items():
        assert "Content-Security-Policy" in response, name
        assert policy(response) == STRICT, name
        assert "unsafe-inline" not in response["Content-Security-Policy"], name


def test_pages_have_no_inline_script_and_no_policy_tag(alice: Any) -> None:
    # The header is the one policy; a second one in a tag could only drift from it.
    user = Client()
    user.force_login(alice)
    pages = [user.get("/"), user.get("/accounts/profile/")]
    pages += [Client().get("/accounts/login/"), Client().get("/accounts/signup/")]
    for page in pages:
        html = page.content.decode()
        assert "<script>" not in html
        assert 'http-equiv="Content-Security-Policy"' not in html
