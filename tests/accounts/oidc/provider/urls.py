from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    # The issuer is http://127.0.0.1:<port>/o (discovery at /o/.well-known/openid-configuration).
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
]
