from __future__ import annotations

from django.urls import path

from accounts.oidc import views

# The names mozilla-django-oidc reverses (the redirect URI is the callback's absolute URL).
urlpatterns = [
    path("authenticate/", views.AuthenticateView.as_view(), name="oidc_authentication_init"),
    path("callback/", views.CallbackView.as_view(), name="oidc_authentication_callback"),
]
