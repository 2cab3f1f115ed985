"""The test provider as a process, and an HTTP client that signs in at its login form."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from tests.accounts.oidc.provider.serve import CLIENT_ID, CLIENT_SECRET

ROOT = Path(__file__).resolve().parents[3]
OUTPUT = ROOT / "test-output"
PASSWORD = "provider-password-1"
USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "password": PASSWORD,
        "name": "Alice Liddell",
        "email": "alice@example.org",
        "groups": ["legal"],
    },
    "bob": {"password": PASSWORD, "name": "Bob Builder", "email": "bob@example.org", "groups": []},
}

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "Provider", "free_port", "sign_in_at_provider"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Provider:
    """django-oauth-toolkit on 127.0.0.1:<port>, with the app's client registered."""

    def __init__(
        self,
        directory: Path,
        *,
        redirect_uris: list[str],
        logout_uris: list[str],
        code_expire_seconds: int = 60,
        name: str = "provider",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.base}/o"
        self.redirect_uris = redirect_uris
        self.logout_uris = logout_uris
        self.code_expire_seconds = code_expire_seconds
        self.log_path = OUTPUT / f"oidc-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.set_users(USERS)

    def set_users(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = json.loads(json.dumps(users))
        (self.directory / "users.json").write_text(json.dumps(self.users))

    def set_groups(self, username: str, groups: list[str]) -> None:
        self.users[username]["groups"] = groups
        self.set_users(self.users)

    def start(self) -> None:
        OUTPUT.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.accounts.oidc.provider.settings",
            "PROVIDER_DIR": str(self.directory),
            "PROVIDER_PORT": str(self.port),
            "PROVIDER_REDIRECT_URIS": " ".join(self.redirect_uris),
            "PROVIDER_LOGOUT_URIS": " ".join(self.logout_uris),
            "PROVIDER_CODE_EXPIRE_SECONDS": str(self.code_expire_seconds),
        }
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.accounts.oidc.provider.serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the test provider exited early; see {self.log_path}")
            with contextlib.suppress(requests.RequestException):
                url = f"{self.issuer}/.well-known/openid-configuration"
                if requests.get(url, timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test provider did not answer; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


def sign_in_at_provider(authorize_url: str, username: str, password: str = PASSWORD) -> str:
    """Follow the authorization request through the provider's login form, as a browser would.

    Returns the provider's redirect back to the app (its callback URL with code and state).
    """
    browser = requests.Session()
    response = browser.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    login_url = urljoin(authorize_url, response.headers["Location"])
    form = browser.get(login_url, timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, form.text
    next_field = re.search(r'name="next" value="([^"]*)"', form.text)
    assert next_field
    response = browser.post(
        login_url,
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": username,
            "password": password,
            "next": next_field.group(1).replace("&amp;", "&"),
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text
    response = browser.get(
        urljoin(login_url, response.headers["Location"]), allow_redirects=False, timeout=10
    )
    assert response.status_code == 302, response.text
    return str(response.headers["Location"])
