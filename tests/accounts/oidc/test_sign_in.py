"""Sign-in with OpenID Connect against a real provider process (django-oauth-toolkit).

The app runs in this process (pytest-django's Client); the provider is its own process on
127.0.0.1, and every request between them is real HTTP: discovery, authorization with the
provider's login form, token, JWKS, userinfo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from accounts.oidc.models import OIDCIdentity
from tests.accounts.oidc.conftest import (
    callback_path,
    make_provider,
    sign_in,
    start_sign_in,
)
from tests.accounts.oidc.idp import Provider, free_port, sign_in_at_provider
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def signed_in_as(client: Client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id).username if user_id else None


def test_first_sign_in_makes_the_user_with_profile_and_groups(oidc: Provider) -> None:
    response = sign_in(Client(), "alice")
    assert response.status_code == 302
    assert response["Location"] == "/"
    alice = User.objects.get(username="alice")
    assert alice.profile.display_name == "Alice Liddell"
    assert alice.email == "alice@example.org"
    assert not alice.has_usable_password()
    assert set(alice.groups.values_list("name", flat=True)) == {"legal"}
    assert OIDCIdentity.objects.get(user=alice).issuer == oidc.issuer


def test_the_chat_page_greets_the_user_by_the_name_claim(oidc: Provider) -> None:
    client = Client()
    sign_in(client, "alice")
    page = client.get("/")
    assert page.status_code == 200
    assert "Alice Liddell" in page.content.decode()


def test_each_sign_in_sets_groups_from_the_claim_and_nothing_else(oidc: Provider) -> None:
    sign_in(Client(), "alice")
    alice = User.objects.get(username="alice")
    alice.is_staff = True
    alice.save()
    Group.objects.create(name="sales")
    oidc.set_groups("alice", ["sales", "research"])

    client = Client()
    sign_in(client, "alice")

    alice.refresh_from_db()
    assert signed_in_as(client) == "alice"
    assert User.objects.filter(username__startswith="alice").count() == 1  # the same user
    assert set(alice.groups.values_list("name", flat=True)) == {"sales", "research"}
    assert Group.objects.filter(name="legal").exists()  # left for others, only unassigned
    assert alice.is_staff  # flags are admin's, never the provider's


def test_without_a_groups_claim_setting_groups_stay_as_admin_set_them(
    oidc: Provider, settings: Any
) -> None:
    settings.OIDC_GROUPS_CLAIM = ""
    sign_in(Client(), "alice")
    assert not User.objects.get(username="alice").groups.exists()


def test_a_provider_username_never_takes_over_a_password_account(oidc: Provider) -> None:
    make_user("alice", "The real Alice")
    client = Client()
    sign_in(client, "alice")
    assert signed_in_as(client) == "alice-2"
    assert User.objects.get(username="alice").check_password(PASSWORD)
    assert User.objects.get(username="alice").profile.display_name == "The real Alice"


def test_usernames_are_made_safe(oidc: Provider) -> None:
    oidc.set_users({**oidc.users, "bob": {**oidc.users["bob"], "preferred_username": "Bob B/ü!"}})
    client = Client()
    sign_in(client, "bob")
    assert signed_in_as(client) == "BobBü"


def test_next_must_name_this_site(oidc: Provider) -> None:
    assert sign_in(Client(), "alice", "https://evil.example/steal")["Location"] == "/"
    assert sign_in(Client(), "alice", "//evil.example/")["Location"] == "/"
    assert sign_in(Client(), "alice", "/accounts/profile/")["Location"] == "/accounts/profile/"


def test_the_request_carries_state_nonce_and_pkce(oidc: Provider) -> None:
    client = Client()
    query = parse_qs(urlsplit(start_sign_in(client)).query)
    state = query["state"][0]
    assert client.session["oidc_states"][state]["nonce"] == query["nonce"][0]
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == ["http://testserver/oidc/callback/"]


def failure(response: Any) -> str:
    assert response.templates[0].name == "accounts/oidc_error.html"
    return str(response.context["message"])


def test_a_wrong_state_is_refused_with_a_clear_message(oidc: Provider) -> None:
    client = Client()
    back = sign_in_at_provider(start_sign_in(client), "alice")
    response = client.get(callback_path(back).replace("state=", "state=forged"))
    assert response.status_code == 400
    assert "state did not match" in failure(response)
    assert "Try again" in response.content.decode()
    assert signed_in_as(client) is None


def test_a_callback_from_another_browser_is_refused(oidc: Provider) -> None:
    back = sign_in_at_provider(start_sign_in(Client()), "alice")
    stranger = Client()
    response = stranger.get(callback_path(back))
    assert response.status_code == 400
    assert "did not start in this browser" in failure(response)
    assert signed_in_as(stranger) is None


def test_a_wrong_nonce_is_refused_with_a_clear_message(oidc: Provider) -> None:
    client = Client()
    authorize = start_sign_in(client)
    state = parse_qs(urlsplit(authorize).query)["state"][0]
    session = client.session
    session["oidc_states"][state]["nonce"] = "not-the-nonce-the-provider-saw"
    session.save()
    response = client.get(callback_path(sign_in_at_provider(authorize, "alice")))
    assert response.status_code == 400
    assert "nonce did not match" in failure(response)
    assert signed_in_as(client) is None
    assert not User.objects.filter(username="alice").exists()


def test_a_reused_code_is_refused_with_a_clear_message(oidc: Provider) -> None:
    first = Client()
    back = sign_in_at_provider(start_sign_in(first), "alice")
    assert first.get(callback_path(back)).status_code == 302
    code = parse_qs(urlsplit(back).query)["code"][0]

    # A new sign-in (so the state is good) handed the code that was already exchanged.
    client = Client()
    state = parse_qs(urlsplit(start_sign_in(client)).query)["state"][0]
    response = client.get("/oidc/callback/", {"code": code, "state": state})
    assert response.status_code == 400
    assert "expired or was already used" in failure(response)
    assert signed_in_as(client) is None


@pytest.fixture
def short_lived_codes(
    tmp_path: Path, use_provider: Callable[[Provider], None]
) -> Iterator[Provider]:
    provider = make_provider(tmp_path, code_expire_seconds=1, name="short-codes")
    use_provider(provider)
    yield provider
    provider.stop()


def test_an_expired_code_is_refused_with_a_clear_message(short_lived_codes: Provider) -> None:
    client = Client()
    back = sign_in_at_provider(start_sign_in(client), "alice")
    time.sleep(2.2)
    response = client.get(callback_path(back))
    assert response.status_code == 400
    assert "expired or was already used" in failure(response)


def test_the_provider_answer_denied_is_shown(oidc: Provider) -> None:
    client = Client()
    state = parse_qs(urlsplit(start_sign_in(client)).query)["state"][0]
    response = client.get("/oidc/callback/", {"error": "access_denied", "state": state})
    assert response.status_code == 403
    assert "did not sign you in" in failure(response)
    assert state not in client.session["oidc_states"]


def test_an_inactive_user_is_refused(oidc: Provider) -> None:
    sign_in(Client(), "alice")
    User.objects.filter(username="alice").update(is_active=False)
    client = Client()
    response = sign_in(client, "alice")
    assert response.status_code == 403
    assert "may not sign in here" in failure(response)
    assert signed_in_as(client) is None


def test_deactivating_a_user_ends_their_oidc_sessions(oidc: Provider) -> None:
    client = Client()
    sign_in(client, "alice")
    assert client.get("/").status_code == 200
    User.objects.filter(username="alice").update(is_active=False)
    assert client.get("/")["Location"].startswith("/accounts/login/")


def test_a_provider_that_is_down_leaves_the_login_page_working(
    use_provider: Callable[[Provider], None], provider: Provider, settings: Any
) -> None:
    use_provider(provider)
    settings.OIDC_ISSUER = f"http://127.0.0.1:{free_port()}/o"  # nothing listens there
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert "Sign in with Test IdP" in page.content.decode()
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 503
    assert failure(response).startswith("The identity provider could not be reached")


def test_a_provider_that_goes_down_mid_sign_in_is_told(
    tmp_path: Path, use_provider: Callable[[Provider], None]
) -> None:
    doomed = make_provider(tmp_path, name="doomed")
    try:
        use_provider(doomed)
        client = Client()
        back = sign_in_at_provider(start_sign_in(client), "alice")
    finally:
        doomed.stop()
    response = client.get(callback_path(back))
    assert response.status_code == 503
    assert failure(response).startswith("The identity provider could not be reached")


def test_logout_ends_the_provider_session(oidc: Provider) -> None:
    client = Client()
    sign_in(client, "alice")
    id_token = client.session["oidc_id_token"]
    response = client.post("/accounts/logout/")
    # A page that moves on to the provider (see ChatLogoutView), with a link as well.
    assert response.status_code == 200
    html = response.content.decode()
    assert '<meta http-equiv="refresh" content="0;url=' in html
    assert 'id="provider-logout"' in html
    url = urlsplit(response.context["provider_logout"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{oidc.issuer}/logout/"
    query = parse_qs(url.query)
    assert query["id_token_hint"] == [id_token]
    assert query["post_logout_redirect_uri"] == ["http://testserver/accounts/login/"]
    assert signed_in_as(client) is None


def test_a_password_logout_stays_local(oidc: Provider, alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"


def test_password_login_still_works_next_to_oidc(oidc: Provider, alice: Any) -> None:
    client = Client()
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Test IdP" in page
    assert 'name="password"' in page
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert signed_in_as(client) == "alice"


def test_without_oidc_settings_there_is_no_button_and_no_flow(settings: Any) -> None:
    settings.OIDC_ISSUER = ""
    page = Client().get("/accounts/login/").content.decode()
    assert "Sign in with" not in page
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert Client().get("/oidc/callback/", {"code": "x", "state": "y"}).status_code == 404


def test_password_login_false_hides_the_form_and_refuses_posts(
    oidc: Provider, settings: Any, alice: Any
) -> None:
    settings.PASSWORD_LOGIN = False
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    html = page.content.decode()
    assert 'name="password"' not in html
    assert "Create an account" not in html
    assert "Sign in with Test IdP" in html

    token = client.cookies["csrftoken"].value
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 403
    assert "Password sign-in is turned off" in response.content.decode()
    assert signed_in_as(client) is None

    signup = client.get("/accounts/signup/")
    assert signup.status_code == 404
    assert "Accounts here come from Test IdP" in signup.content.decode()
    response = client.post(
        "/accounts/signup/",
        {
            "username": "mallory",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 404
    assert not User.objects.filter(username="mallory").exists()


def test_the_login_form_keeps_its_csrf_check(oidc: Provider, alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert signed_in_as(client) is None


def test_admin_login_is_djangos_own_whatever_password_login_says(settings: Any) -> None:
    settings.PASSWORD_LOGIN = False
    User.objects.create_superuser("root", password=PASSWORD)
    client = Client()
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert response.status_code == 302
    assert signed_in_as(client) == "root"


def test_admin_lists_identities(oidc: Provider) -> None:
    sign_in(Client(), "alice")
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password=PASSWORD))
    page = admin.get("/admin/oidc/oidcidentity/")
    assert page.status_code == 200
    assert OIDCIdentity.objects.get().subject in page.content.decode()
