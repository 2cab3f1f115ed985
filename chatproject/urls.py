from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from chatproject.errors import api_not_found
from chatproject.ops import health, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    # Sign-in with OpenID Connect: the redirect URI to register is <site>/oidc/callback/.
    path("oidc/", include("accounts.oidc.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("", include("attachments.urls")),
    path("", include("sharing.urls")),
    path("", include("conversations.urls")),
    # Last: whatever under /api/ no endpoint took answers JSON (chatproject/errors.py).
    re_path(r"^api/(?P<rest>.*)$", api_not_found),
]

handler400 = "chatproject.errors.bad_request"
handler403 = "chatproject.errors.permission_denied"
handler404 = "chatproject.errors.not_found"
handler500 = "chatproject.errors.server_error"
