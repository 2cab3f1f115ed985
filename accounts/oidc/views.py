"""The two ends of the redirect flow, and the provider's half of logging out."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.views import View
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
)

from accounts.oidc import oidc_enabled
from accounts.oidc.discovery import ProviderUnavailable, provider_config
from accounts.oidc.errors import Reason, SignInError

logger = logging.getLogger(__name__)

# What the user is told, and the status it comes with. Nothing here says more than the user
# needs; the log has the provider's own words.
FAILURES: dict[Reason, tuple[str, int]] = {
    "unavailable": ("The identity provider could not be reached. Try again in a moment.", 503),
    "state": (
        "This sign-in did not start in this browser, or it was already used "
        "(the state did not match).",
        400,
    ),
    "nonce": (
        "The identity provider's answer failed a security check (the nonce did not match).",
        400,
    ),
    "code": ("The sign-in code has expired or was already used.", 400),
    "token": ("The identity provider's answer could not be verified.", 400),
    "denied": ("The identity provider did not sign you in.", 403),
    "refused": ("This account may not sign in here. Ask an administrator.", 403),
}


def failure_page(request: HttpRequest, reason: Reason) -> HttpResponse:
    message, status = FAILURES[reason]
    context = {"message": message, "reason": reason, "oidc_name": settings.OIDC_NAME}
    return render(request, "accounts/oidc_error.html", context, status=status)


class AuthenticateView(OIDCAuthenticationRequestView):
    def __init__(self, **kwargs: Any) -> None:
        # The base class reads the endpoint from settings here; ours comes from discovery.
        View.__init__(self, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not oidc_enabled():
            raise Http404("OpenID Connect sign-in is not configured")
        # Fetched again on every click (one small GET, OIDC_TIMEOUT at most): this is where a
        # provider that is away must be told, before the browser is sent to a dead address.
        try:
            config = provider_config(fresh=True)
        except ProviderUnavailable:
            return failure_page(request, "unavailable")
        self.OIDC_OP_AUTH_ENDPOINT = config.authorization_endpoint
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        # The base class keeps `next` only when it names this site (no open redirect).
        response: HttpResponse = super().get(request)
        return response


class CallbackView(OIDCAuthenticationCallbackView):
    def get(self, request: HttpRequest) -> HttpResponse:
        if not oidc_enabled():
            raise Http404("OpenID Connect sign-in is not configured")
        state = request.GET.get("state")
        started = request.session.get("oidc_states", {})
        if request.GET.get("error"):
            logger.info(
                "OpenID Connect provider answered %s: %s",
                request.GET.get("error"),
                request.GET.get("error_description", ""),
            )
            if state in started:  # it cannot be replayed
                del started[state]
                request.session.save()
            return failure_page(request, "denied")
        # The base class raises SuspiciousOperation (a bare 400) for an unknown state.
        if not request.GET.get("code") or state not in started:
            return failure_page(request, "state")
        try:
            response: HttpResponse = super().get(request)
        except SignInError as exc:
            logger.warning("OpenID Connect sign-in failed (%s): %s", exc.reason, exc)
            return failure_page(request, exc.reason)
        return response

    def login_failure(self) -> HttpResponse:
        # No user, or an inactive one (a lockout by django-axes ends here as well).
        return failure_page(self.request, "refused")


def provider_logout_url(request: HttpRequest) -> str | None:
    """Where to end the provider's session too; read it before the session is flushed."""
    id_token = request.session.get("oidc_id_token")
    if not id_token or not oidc_enabled():
        return None
    try:
        endpoint = provider_config().end_session_endpoint
    except ProviderUnavailable:
        return None  # signed out here; the provider's session ends on its own
    if not endpoint:
        return None
    query = urlencode(
        {
            "id_token_hint": id_token,
            "client_id": settings.OIDC_CLIENT_ID,
            "post_logout_redirect_uri": request.build_absolute_uri(
                resolve_url(settings.LOGOUT_REDIRECT_URL)
            ),
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
