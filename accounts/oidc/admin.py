from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from accounts.oidc.models import OIDCIdentity


@admin.register(OIDCIdentity)
class OIDCIdentityAdmin(admin.ModelAdmin):
    # Read-only: an identity is made by the first sign-in; deleting one lets that provider
    # account make a new user at its next sign-in.
    list_display = ["subject", "user", "issuer", "created_at", "last_sign_in_at"]
    list_select_related = ["user"]
    search_fields = ["subject", "user__username", "user__email"]
    readonly_fields = ["user", "issuer", "subject", "created_at", "last_sign_in_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
