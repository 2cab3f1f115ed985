from __future__ import annotations

from django.contrib.auth.views import LogoutView
from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", views.ChatLoginView.as_view(), name="login"),
    # Django 5's LogoutView answers only POST, so no link or image can log a user out.
    path("logout/", LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("profile/", views.profile, name="profile"),
]
