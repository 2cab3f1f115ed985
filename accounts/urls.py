from __future__ import annotations

from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", views.ChatLoginView.as_view(), name="login"),
    # Django 5's LogoutView answers only POST, so no link or image can log a user out.
    # It also ends the identity provider's session after an OpenID Connect sign-in.
    path("logout/", views.ChatLogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("profile/", views.profile, name="profile"),
]
