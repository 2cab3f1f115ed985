"""mozilla-django-oidc's backend with endpoints from discovery and users found by (iss, sub)."""

from __future__ import annotations

import logging
import re
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.models import Profile
from accounts.oidc import oidc_enabled
from accounts.oidc.discovery import ProviderUnavailable, provider_config
from accounts.oidc.errors import SignInError
from accounts.oidc.models import OIDCIdentity
from conversations.text import one_line, visible

logger = logging.getLogger(__name__)

UNSAFE_USERNAME_CHARS = re.compile(r"[^\w.@+-]")
USERNAME_MAX = 150
GROUP_NAME_MAX = 150
DISPLAY_NAME_MAX = 80  # Profile.display_name


class OIDCBackend(OIDCAuthenticationBackend):
    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_RP_IDP_SIGN_KEY = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds every backend for every authenticate(), password logins included:
        # nothing here may read the provider's endpoints (the base class reads settings).
        self.UserModel = get_user_model()

    # The endpoints the base class reads as attributes, from discovery when first needed.
    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:
        return _config().token_endpoint

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:
        return _config().userinfo_endpoint

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:
        return _config().jwks_uri

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:
        return str(settings.OIDC_CLIENT_ID)

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:
        return str(settings.OIDC_CLIENT_SECRET)

    # ModelBackend's, not mozilla-django-oidc's: a deactivated user's sessions must end. The
    # very function, so that a turn checks these sessions as it checks a password login's
    # (conversations.services.session_signs_in).
    get_user = ModelBackend.get_user

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        # Only the callback passes a nonce; a password login never reaches the provider.
        if request is None or "nonce" not in kwargs or not oidc_enabled():
            return None
        try:
            return super().authenticate(request, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            logger.warning("OpenID Connect provider unreachable during sign-in: %s", exc)
            raise SignInError(str(exc), reason="unavailable") from exc
        except requests.HTTPError as exc:  # userinfo or JWKS answered with an error
            logger.warning("OpenID Connect provider refused a request: %s", exc)
            raise SignInError(str(exc), reason="token") from exc

    def get_payload_data(self, token: Any, key: Any) -> dict[str, Any]:
        # The base class checks neither audience nor issuer; an ID token issued to another
        # client of the same provider must not sign anyone in here.
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
                raise jwt.InvalidAlgorithmError(f"alg {header.get('alg')!r}")
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.OIDC_RP_SIGN_ALGO],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=_config().issuer,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            logger.warning("OpenID Connect ID token rejected: %s", exc)
            raise SignInError(str(exc), reason="token") from exc
        return payload

    def verify_token(self, token: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            key = self.retrieve_matching_jwk(token)
        except (SuspiciousOperation, jwt.InvalidTokenError, KeyError) as exc:
            logger.warning("OpenID Connect ID token has no usable key: %s", exc)
            raise SignInError(str(exc), reason="token") from exc
        claims = self.get_payload_data(token, key)
        if "nonce" in kwargs and claims.get("nonce") != kwargs["nonce"]:
            raise SignInError("nonce mismatch", reason="nonce")
        return claims

    def raise_token_response_error(self, response: requests.Response) -> None:
        if response.status_code == 200:
            return
        try:
            error = response.json().get("error")
        except ValueError:
            error = None
        logger.warning(
            "OpenID Connect token endpoint answered %s: %s", response.status_code, response.text
        )
        if error == "invalid_grant":
            raise SignInError("code expired or already used", reason="code")
        if response.status_code >= 500:
            raise SignInError(f"token endpoint {response.status_code}", reason="unavailable")
        raise SignInError(f"token endpoint {response.status_code}: {error}", reason="token")

    def get_or_create_user(
        self, access_token: str, id_token: str, payload: dict[str, Any]
    ) -> AbstractBaseUser:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        # OpenID Connect Core 5.3.2: userinfo about another subject must not be used.
        if str(userinfo.get("sub")) != str(payload["sub"]):
            raise SignInError("userinfo sub differs from the ID token's", reason="token")
        return identity_sign_in(
            issuer=_config().issuer,
            claims={**payload, **userinfo},
            groups_claim=settings.OIDC_GROUPS_CLAIM,
        )


def _config() -> Any:
    try:
        return provider_config()
    except ProviderUnavailable as exc:
        raise SignInError(str(exc), reason="unavailable") from exc


@transaction.atomic
def identity_sign_in(*, issuer: str, claims: dict[str, Any], groups_claim: str) -> Any:
    """The user a provider account signs in as: made on first sign-in, groups synced each time."""
    subject = str(claims["sub"])
    identity = (
        OIDCIdentity.objects.select_related("user")
        .select_for_update()
        .filter(issuer=issuer, subject=subject)
        .first()
    )
    if identity is None:
        user = _user_create(claims)
        OIDCIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        name = one_line(str(claims.get("name") or ""))[:DISPLAY_NAME_MAX]
        name = name if visible(name) else ""
        Profile.objects.update_or_create(user=user, defaults={"display_name": name})
    else:
        user = identity.user
        identity.save(update_fields=["last_sign_in_at"])
        email = str(claims.get("email") or "")
        if email and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
    if groups_claim:
        _groups_sync(user, claims.get(groups_claim))
    return user


def _user_create(claims: dict[str, Any]) -> Any:
    User = get_user_model()
    base = UNSAFE_USERNAME_CHARS.sub("", str(claims.get("preferred_username") or "")) or (
        UNSAFE_USERNAME_CHARS.sub("", str(claims["sub"]))
    )
    base = base[: USERNAME_MAX - 8] or "user"
    email = str(claims.get("email") or "")
    for n in range(1, 1000):
        username = base if n == 1 else f"{base}-{n}"
        if User.objects.filter(username__iexact=username).exists():
            continue
        try:
            with transaction.atomic():  # a concurrent first sign-in may take the name first
                # No password: this account signs in through the provider only.
                return User.objects.create_user(username=username, email=email)
        except IntegrityError:
            continue
    raise SignInError(f"no free username for {base!r}", reason="refused")


def _groups_sync(user: Any, value: Any) -> None:
    # Only group membership follows the provider; staff and superuser flags stay admin's.
    if value is None:
        values: list[Any] = []
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    names = sorted({str(v).strip()[:GROUP_NAME_MAX] for v in values if str(v).strip()})
    groups = [Group.objects.get_or_create(name=name)[0] for name in names]
    user.groups.set(groups)
