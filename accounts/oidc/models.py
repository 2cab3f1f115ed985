from __future__ import annotations

from django.conf import settings
from django.db import models


class OIDCIdentity(models.Model):
    """Which provider account signs in as which user.

    Users are found by (issuer, sub), never by username or email: a provider account whose
    preferred_username happens to be "alice" must not take over the password account alice.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["issuer", "subject"]
        verbose_name = "OpenID Connect identity"
        verbose_name_plural = "OpenID Connect identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
