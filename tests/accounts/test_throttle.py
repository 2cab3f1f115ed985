"""Failed logins and signups are throttled, with the shipped defaults: five failures lock an
account and an address for 15 minutes; three signups per address per hour."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOCKED = "Too many attempts. Try again in 15 minutes."


def log_in(username: str, password: str, address: str = "127.0.0.1", **headers: str) -> Any:
    client = Client(REMOTE_ADDR=address, headers=headers)
    # The test client's response keeps its client (response.client) and so its session.
    return client.post("/accounts/login/", {"username": username, "password": password})


def logged_in(response: Any) -> bool:
    return response.status_code == 302 and response.client.get("/").status_code == 200


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(alice: Any) -> None:
    for _ in range(4):
        wrong = log_in("alice", "not-it")
        assert wrong.status_code == 200
        assert "Please enter a correct username and password" in wrong.content.decode()

    fifth = log_in("alice", "not-it")
    right = log_in("alice", PASSWORD)

    assert fifth.status_code == 429
    assert LOCKED in fifth.content.decode()
    assert right.status_code == 429
    assert LOCKED in right.content.decode()
    assert right["Retry-After"] == "900"
    assert not logged_in(right)
    # The page is still the login page, ready for later.
    assert 'name="password"' in right.content.decode()


def test_a_locked_account_stays_locked_from_another_address(alice: Any) -> None:
    for n in range(5):
        log_in("alice", "not-it", address=f"203.0.113.{n + 1}")

    from_elsewhere = log_in("alice", PASSWORD, address="198.51.100.9")

    assert from_elsewhere.status_code == 429
    assert not logged_in(from_elsewhere)


def test_one_address_guessing_many_accounts_is_locked_out(bob: Any) -> None:
    for name in ("carol", "dave", "erin", "frank", "grace"):
        assert log_in(name, "guess", address="203.0.113.7").status_code in (200, 429)

    same_address = log_in("bob", PASSWORD, address="203.0.113.7")
    other_address = log_in("bob", PASSWORD, address="198.51.100.3")

    assert same_address.status_code == 429
    assert LOCKED in same_address.content.decode()
    assert logged_in(other_address), "bob's account itself is not locked"


def test_a_forged_forwarded_for_does_not_change_the_address(bob: Any) -> None:
    # No proxy is trusted by default (TRUSTED_PROXY_COUNT=0): the header is the client's own.
    for n, name in enumerate(("carol", "dave", "erin", "frank", "grace")):
        log_in(name, "guess", address="203.0.113.8", x_forwarded_for=f"192.0.2.{n}")

    again = log_in("bob", PASSWORD, address="203.0.113.8", x_forwarded_for="192.0.2.99")

    assert again.status_code == 429


def test_behind_a_trusted_proxy_the_address_is_the_one_it_saw(bob: Any, settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for name in ("carol", "dave", "erin", "frank", "grace"):
        # Whatever the client puts in front, the proxy appends the address it really saw.
        log_in(name, "guess", address=proxy, x_forwarded_for=f"192.0.2.{len(name)}, 198.51.100.4")

    guesser = log_in("bob", PASSWORD, address=proxy, x_forwarded_for="1.2.3.4, 198.51.100.4")
    neighbour = log_in("bob", PASSWORD, address=proxy, x_forwarded_for="198.51.100.5")

    assert guesser.status_code == 429
    assert logged_in(neighbour), "other clients of the same proxy are not locked out"


def test_the_lock_ends_after_the_cool_off(alice: Any) -> None:
    for _ in range(5):
        log_in("alice", "not-it")
    assert log_in("alice", PASSWORD).status_code == 429

    # Fifteen minutes and a little more pass.
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))

    assert logged_in(log_in("alice", PASSWORD))


def test_admin_sees_the_lockout_and_clearing_it_lets_the_user_in(alice: Any) -> None:
    for _ in range(5):
        log_in("alice", "not-it")
    admin = Client()
    admin.force_login(
        get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    )

    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "alice" in page
    assert "Locked Out" in page

    attempts = list(AccessAttempt.objects.filter(username="alice").values_list("pk", flat=True))
    cleared = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": attempts, "post": "yes"},
    )
    assert cleared.status_code == 302

    assert logged_in(log_in("alice", PASSWORD))


def test_the_admin_login_is_throttled_too(alice: Any) -> None:
    client = Client()
    for _ in range(4):
        client.post("/admin/login/", {"username": "alice", "password": "not-it"})

    fifth = client.post("/admin/login/", {"username": "alice", "password": "not-it"})

    assert fifth.status_code == 429
    assert LOCKED in fifth.content.decode()


def sign_up(username: str, address: str = "127.0.0.1") -> Any:
    return Client(REMOTE_ADDR=address).post(
        "/accounts/signup/",
        {"username": username, "password1": PASSWORD, "password2": PASSWORD},
    )


def test_three_signups_per_address_per_hour() -> None:
    for name in ("anna", "ben", "cleo"):
        assert sign_up(name).status_code == 302

    fourth = sign_up("dino")
    elsewhere = sign_up("emma", address="198.51.100.20")

    assert fourth.status_code == 429
    text = fourth.content.decode()
    assert "Too many sign-ups from your network. Try again in " in text
    minutes = int(text.split("Try again in ")[1].split(" minute")[0])
    assert 1 <= minutes <= 60
    assert int(fourth["Retry-After"]) == minutes * 60
    assert not get_user_model().objects.filter(username="dino").exists()
    assert elsewhere.status_code == 302


def test_failed_signups_do_not_use_up_the_limit() -> None:
    for _ in range(5):
        mismatch = Client().post(
            "/accounts/signup/",
            {"username": "anna", "password1": PASSWORD, "password2": "something else"},
        )
        assert mismatch.status_code == 200

    assert sign_up("anna").status_code == 302


def test_a_user_logging_in_normally_is_never_throttled(alice: Any) -> None:
    for _ in range(10):
        response = log_in("alice", PASSWORD)
        assert logged_in(response)
        response.client.post("/accounts/logout/")
