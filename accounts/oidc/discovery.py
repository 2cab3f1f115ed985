"""The provider's discovery document, fetched lazily with a short timeout and cached."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import requests
from django.conf import settings

logger = logging.getLogger(__name__)


class ProviderUnavailable(Exception):
    """The discovery document could not be fetched or is not usable."""


@dataclass(frozen=True)
class ProviderConfig:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


_lock = threading.Lock()
_cached: tuple[float, str, ProviderConfig] | None = None


def provider_config(*, fresh: bool = False) -> ProviderConfig:
    """The provider's endpoints; `fresh` fetches the document again whatever the cache holds."""
    global _cached
    issuer = settings.OIDC_ISSUER.rstrip("/")
    now = time.monotonic()
    cached = _cached
    if (
        not fresh
        and cached is not None
        and cached[1] == issuer
        and now - cached[0] < settings.OIDC_DISCOVERY_CACHE_SECONDS
    ):
        return cached[2]
    config = _fetch(issuer)
    with _lock:
        _cached = (now, issuer, config)
    return config


def forget() -> None:
    """Drop the cached document (tests, or after changing OIDC_ISSUER)."""
    global _cached
    with _lock:
        _cached = None


def _fetch(issuer: str) -> ProviderConfig:
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("OpenID Connect discovery failed at %s: %s", url, exc)
        raise ProviderUnavailable(str(exc)) from exc
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"{url} is not a JSON object")
    # OpenID Connect Discovery 1.0, section 4.3: the issuer in the document must be the one
    # we asked, or a document served elsewhere could name someone else's endpoints.
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        logger.error(
            "OpenID Connect discovery at %s names issuer %r, not OIDC_ISSUER=%r",
            url,
            document.get("issuer"),
            issuer,
        )
        raise ProviderUnavailable("issuer mismatch")
    try:
        return ProviderConfig(
            issuer=str(document["issuer"]),
            authorization_endpoint=str(document["authorization_endpoint"]),
            token_endpoint=str(document["token_endpoint"]),
            userinfo_endpoint=str(document["userinfo_endpoint"]),
            jwks_uri=str(document["jwks_uri"]),
            end_session_endpoint=document.get("end_session_endpoint") or None,
        )
    except KeyError as exc:
        logger.error("OpenID Connect discovery at %s lacks %s", url, exc)
        raise ProviderUnavailable(f"discovery document lacks {exc}") from exc
