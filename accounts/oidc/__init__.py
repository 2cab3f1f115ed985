"""Sign-in with OpenID Connect through mozilla-django-oidc, configured by environment variables.

The provider's endpoints come from its discovery document (`discovery.py`), fetched when a
sign-in first needs them rather than at startup, so a provider that is away never stops the
site from starting: the login page still works and the button says what is wrong.
"""

from __future__ import annotations

from django.conf import settings


def oidc_enabled() -> bool:
    # Read at request time, so tests can switch it with the settings fixture.
    return bool(settings.OIDC_ISSUER and settings.OIDC_CLIENT_ID and settings.OIDC_CLIENT_SECRET)
