"""Sign-in with OpenID Connect in Chromium, against a real provider process.

The app is a Daphne process over the test database (as in conftest.py's app_url, with the
OIDC variables set); the provider is django-oauth-toolkit in a process of its own
(tests/accounts/oidc/provider/). Both listen on 127.0.0.1, on ports of their own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import Browser, Page, ViewportSize, expect

from personas.models import Persona
from tests.accounts.oidc.idp import (
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    Provider,
    free_port,
)
from tests.browser.conftest import CHROMIUM, DESKTOP, OUTPUT, ROOT, PageErrors, screenshot
from tests.conftest import subprocess_database_url

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class Site:
    def __init__(self, url: str, provider: Provider) -> None:
        self.url = url
        self.provider = provider


def _serve_app(port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "DJANGO_DEBUG": "true",
        "LLM_PROVIDER": "demo",
        "DEMO_TOKEN_DELAY_MS": "1",
        "DB_POOL_MAX_SIZE": "4",
        **extra_env,
    }
    env.pop("DATABASE_TEST_NAME", None)
    log = (OUTPUT / "daphne-oidc.log").open("w")
    daphne = str(Path(sys.executable).with_name("daphne"))
    process = subprocess.Popen(
        [daphne, "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Daphne exited early; see {OUTPUT / 'daphne-oidc.log'}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response,
        ):
            if response.status == 200:
                return process
        if time.monotonic() > deadline:
            raise RuntimeError("Daphne did not answer /healthz within 30 s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("browser tests share the test database with Daphne: needs PostgreSQL")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    OUTPUT.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    provider = Provider(
        tmp_path_factory.mktemp("idp-browser"),
        redirect_uris=[f"{url}/oidc/callback/"],
        logout_uris=[f"{url}/accounts/login/"],
        name="provider-browser",
    )
    provider.start()
    app = None
    try:
        app = _serve_app(
            port,
            {
                "OIDC_ISSUER": provider.issuer,
                "OIDC_CLIENT_ID": CLIENT_ID,
                "OIDC_CLIENT_SECRET": CLIENT_SECRET,
                "OIDC_NAME": "Example Corp",
                "OIDC_GROUPS_CLAIM": "groups",
                "OIDC_TIMEOUT": "2",
            },
        )
        yield Site(url, provider)
    finally:
        if app is not None:
            app.terminate()
            try:
                app.wait(10)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait(5)
        provider.stop()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    viewport: ViewportSize = {"width": DESKTOP["width"], "height": DESKTOP["height"]}
    context = browser.new_context(base_url=site.url, viewport=viewport)
    context.set_default_timeout(15_000)
    errors = PageErrors()
    page = context.new_page()
    errors.watch(page)
    yield page
    context.close()
    assert not errors.errors, errors.errors


def sign_in_at_provider(page: Page, username: str) -> None:
    expect(page.get_by_role("heading", name="Test identity provider")).to_be_visible()
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in to the test provider").click()


def test_sign_in_maps_groups_and_sign_out_ends_the_provider_session(page: Page, site: Site) -> None:
    legal = Group.objects.create(name="legal")
    Persona.objects.create(
        slug="assistant", name="Assistant", system_prompt="Help.", avatar="💬", is_default=True
    )
    counsel = Persona.objects.create(
        slug="counsel", name="Legal counsel", system_prompt="Advise.", avatar="⚖️", order=1
    )
    counsel.groups.add(legal)
    site.provider.set_groups("alice", ["legal"])

    page.goto("/")
    expect(page).to_have_url(f"{site.url}/accounts/login/?next=/")
    page.get_by_role("link", name="Sign in with Example Corp").click()
    sign_in_at_provider(page, "alice")

    expect(page).to_have_url(f"{site.url}/")
    expect(page.locator(".user-name")).to_have_text("Alice Liddell")
    expect(page.locator("#persona-options")).to_contain_text("Legal counsel")
    alice = User.objects.get(username="alice")
    assert set(alice.groups.values_list("name", flat=True)) == {"legal"}
    screenshot(page, "oidc-signed-in")

    page.locator("#logout").click()
    expect(page).to_have_url(f"{site.url}/accounts/login/")

    # The provider's session ended too: signing in again asks for the password again,
    # and the groups the provider names now are the user's (legal no longer).
    site.provider.set_groups("alice", ["sales"])
    page.get_by_role("link", name="Sign in with Example Corp").click()
    sign_in_at_provider(page, "alice")
    expect(page).to_have_url(f"{site.url}/")
    expect(page.locator(".user-name")).to_have_text("Alice Liddell")
    expect(page.locator("#persona-options")).to_contain_text("Assistant")
    expect(page.locator("#persona-options")).not_to_contain_text("Legal counsel")
    assert set(alice.groups.values_list("name", flat=True)) == {"sales"}
    assert User.objects.filter(username__startswith="alice").count() == 1


def test_a_forged_callback_shows_a_page_in_the_apps_look(page: Page, site: Site) -> None:
    page.goto("/oidc/callback/?code=stolen&state=forged")
    expect(page.locator("#oidc-error")).to_contain_text("the state did not match")
    expect(page.locator(".brand")).to_contain_text("Persona Chat")
    page.get_by_role("link", name="Try again").click()
    expect(page.get_by_role("link", name="Sign in with Example Corp")).to_be_visible()


def test_a_provider_that_is_down_is_told_on_the_button(page: Page, site: Site) -> None:
    site.provider.stop()
    try:
        page.goto("/accounts/login/")
        expect(page.locator("#id_password")).to_be_visible()  # password sign-in still works
        page.get_by_role("link", name="Sign in with Example Corp").click()
        expect(page.locator("#oidc-error")).to_contain_text(
            "The identity provider could not be reached"
        )
        screenshot(page, "oidc-provider-down")
    finally:
        site.provider.start()
    # Back up: the same button works again, with no restart of the app.
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Sign in with Example Corp").click()
    sign_in_at_provider(page, "bob")
    expect(page.locator(".user-name")).to_have_text("Bob Builder")
