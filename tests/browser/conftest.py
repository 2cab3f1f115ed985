"""A real Daphne over the test database, driven by Debian's Chromium through Playwright.

pytest-django's live_server speaks no WebSocket, so the app runs in a Daphne subprocess
pointed at the test database; data crosses the process boundary, hence
`django_db(transaction=True)` in every browser test.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import session_cookie, subprocess_database_url

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
SCREENSHOTS = OUTPUT / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Slow enough that a test can watch a reply grow, stop it or reload in the middle of it;
# fast enough that a whole reply takes about two seconds.
DEMO_TOKEN_DELAY_MS = "25"
DEMO_REPLY_WORDS = "80"
DESKTOP = {"width": 1280, "height": 800}
expect.set_options(timeout=10_000)
PHONE = {"width": 375, "height": 812}
SERVER_APPLICATION_NAME = "browser-tests-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Package scope: Daphne's pooled connections to the test database must be gone before
# other packages run, or tests that count PostgreSQL backends would count them too.
@pytest.fixture(scope="package")
def app_url(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The base URL of a Daphne process serving the pytest-django test database."""
    if connection.vendor != "postgresql":
        pytest.skip("browser tests share the test database with Daphne: needs PostgreSQL")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    OUTPUT.mkdir(exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        # settings.DATABASES now names the test database (test_<name>).
        "DATABASE_URL": subprocess_database_url(),
        "DJANGO_DEBUG": "true",
        "DEMO_TOKEN_DELAY_MS": DEMO_TOKEN_DELAY_MS,
        "DEMO_REPLY_WORDS": DEMO_REPLY_WORDS,
        "DEMO_FAIL_AFTER_WORDS": "",
        "LLM_PROVIDER": "demo",
        "ALLOW_SIGNUP": "true",
        "DB_POOL_MAX_SIZE": "4",
        # Its connections told apart from this process's own (libpq reads the name from
        # here; the loop's are `chat-turn`): a test may cut the server's alone.
        "PGAPPNAME": SERVER_APPLICATION_NAME,
    }
    env.pop("DATABASE_TEST_NAME", None)
    daphne = str(Path(sys.executable).with_name("daphne"))
    log = (OUTPUT / "daphne.log").open("w")
    process = subprocess.Popen(
        [daphne, "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Daphne exited early; see {OUTPUT / 'daphne.log'}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/healthz", timeout=1) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("Daphne did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        # Before the test database is dropped: Daphne's pool holds connections to it.
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop running on this thread, which trips
    # Django's async-safety check for the ORM calls the tests make between page actions.
    # The override is scoped to the browser tests and ends with them, as does the loop,
    # so async tests elsewhere get a thread with no loop running.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()


class PageErrors:
    """Uncaught script errors and failed console errors, collected to fail the test."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))


@pytest.fixture
def new_context(browser: Browser, app_url: str) -> Iterator[Callable[..., BrowserContext]]:
    contexts: list[BrowserContext] = []

    def make(user: Any = None, **options: Any) -> BrowserContext:
        options.setdefault("viewport", DESKTOP)
        context = browser.new_context(base_url=app_url, **options)
        context.set_default_timeout(15_000)
        if user is not None:
            context.add_cookies(
                [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": session_cookie(user),
                        "url": app_url,
                    }
                ]
            )
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def open_page(
    new_context: Callable[..., BrowserContext], page_errors: PageErrors
) -> Iterator[Callable[..., Page]]:
    """A page in a fresh context, logged in as `user` when given."""

    def make(user: Any = None, path: str = "/", **options: Any) -> Page:
        page = new_context(user, **options).new_page()
        page_errors.watch(page)
        if path:
            page.goto(path)
        return page

    yield make
    assert not page_errors.errors, page_errors.errors


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # animations="disabled" finishes transitions first (the phone drawer slides in).
    page.screenshot(path=str(path), animations="disabled")
    return path


def visible_text(markdown: str) -> str:
    """What a reader sees of the demo's markdown: markers gone, whitespace collapsed."""
    text = re.sub(r"^\s*[-*] ", "", markdown, flags=re.MULTILINE)
    text = text.replace("**", "").replace("`", "")
    return " ".join(text.split())


def shown(page: Page, selector: str) -> str:
    return " ".join(page.inner_text(selector).split())
