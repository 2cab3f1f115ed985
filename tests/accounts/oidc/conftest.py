"""A real provider process for the in-process app (pytest-django's Client on testserver)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.oidc.discovery import forget
from tests.accounts.oidc.idp import CLIENT_ID, CLIENT_SECRET, Provider, sign_in_at_provider

CALLBACK = "http://testserver/oidc/callback/"
AFTER_LOGOUT = "http://testserver/accounts/login/"


def make_provider(directory: Path, **options: Any) -> Provider:
    provider = Provider(directory, redirect_uris=[CALLBACK], logout_uris=[AFTER_LOGOUT], **options)
    provider.start()
    return provider


@pytest.fixture(scope="package")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    provider = make_provider(tmp_path_factory.mktemp("idp"), name="provider")
    yield provider
    provider.stop()


@pytest.fixture
def use_provider(settings: Any) -> Iterator[Callable[[Provider], None]]:
    """Point the app at a provider, as OIDC_ISSUER, OIDC_CLIENT_ID and the secret would."""

    def use(provider: Provider) -> None:
        forget()
        settings.OIDC_ISSUER = provider.issuer
        settings.OIDC_CLIENT_ID = CLIENT_ID
        settings.OIDC_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_NAME = "Test IdP"
        settings.OIDC_GROUPS_CLAIM = "groups"

    yield use
    forget()


@pytest.fixture
def oidc(use_provider: Callable[[Provider], None], provider: Provider) -> Provider:
    use_provider(provider)
    provider.set_users(provider.users)  # a test may have changed someone's groups
    return provider


def start_sign_in(client: Client, next_url: str | None = None) -> str:
    """Click "Sign in with …": the authorization request the app sends the browser to."""
    response = client.get("/oidc/authenticate/", {"next": next_url} if next_url else {})
    assert response.status_code == 302, response.content
    return str(response["Location"])


def callback_path(url: str) -> str:
    assert url.startswith(CALLBACK), url
    return url.removeprefix("http://testserver")


def sign_in(client: Client, username: str, next_url: str | None = None) -> Any:
    """The whole redirect flow; returns the app's answer to the provider's redirect back."""
    back = sign_in_at_provider(start_sign_in(client, next_url), username)
    return client.get(callback_path(back))
