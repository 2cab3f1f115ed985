from __future__ import annotations

from django.apps import AppConfig


class OIDCConfig(AppConfig):
    name = "accounts.oidc"
    label = "oidc"
    verbose_name = "OpenID Connect sign-in"
    default_auto_field = "django.db.models.BigAutoField"
