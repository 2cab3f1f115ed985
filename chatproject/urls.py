from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from chatproject import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("conversations.urls")),
]
