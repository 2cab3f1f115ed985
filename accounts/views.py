from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView, LogoutView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts import throttle
from accounts.forms import ProfileForm
from accounts.models import Profile
from accounts.oidc import oidc_enabled
from accounts.oidc.views import provider_logout_url
from accounts.services import Period, duration_text, period_bounds, usage_for
from conversations.services import budget_for

# What the profile page calls the current period.
PERIOD_LABELS: dict[str, str] = {
    "day": "Today (since 00:00 UTC)",
    "week": "This week (since Monday 00:00 UTC)",
    "month": "This month (since the 1st, 00:00 UTC)",
}
USAGE_WINDOW = timedelta(days=30)


def signup_open() -> bool:
    # Read at request time, not import time, so the settings can change under tests.
    return bool(settings.ALLOW_SIGNUP and settings.PASSWORD_LOGIN)


class ChatLoginView(LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["allow_signup"] = signup_open()
        context["password_login_off"] = not settings.PASSWORD_LOGIN
        context["oidc_enabled"] = oidc_enabled()
        context["oidc_name"] = settings.OIDC_NAME
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # CSRF is still checked first (LoginView's dispatch), whatever the answer.
        if not settings.PASSWORD_LOGIN:
            context = self.get_context_data(password_refused=True)
            return self.render_to_response(context, status=403)
        return super().post(request, *args, **kwargs)


class ChatLogoutView(LogoutView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Read before logout() flushes the session that holds the ID token. logout() itself
        # still runs here, so the session's sockets close as before (conversations.signals).
        provider_logout = provider_logout_url(request)
        response = super().post(request, *args, **kwargs)
        if provider_logout is None:
            return response
        # A page that moves on by itself, not a redirect: the CSP's form-action 'self' also
        # covers where a form's answer redirects, and this form was posted from our page.
        context = {"provider_logout": provider_logout, "oidc_name": settings.OIDC_NAME}
        return render(request, "accounts/oidc_logout.html", context)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not signup_open():
        context: dict[str, Any] = {
            "closed": True,
            "password_login": settings.PASSWORD_LOGIN,
            "oidc_name": settings.OIDC_NAME if oidc_enabled() else "",
        }
        return render(request, "accounts/signup.html", context, status=404)
    if request.user.is_authenticated:
        return redirect("chat")
    form: UserCreationForm[User] = UserCreationForm(
        request.POST if request.method == "POST" else None
    )
    if request.method == "POST":
        # Checked before the form's work, and counted again, atomically, before saving.
        wait = throttle.signup_wait(request)
        if wait is None and form.is_valid():
            wait = throttle.signup_wait(request, take=True)
            if wait is None:
                user = form.save()
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                return redirect("chat")
        if wait is not None:
            # A blank form: the refused one is not worth validating or echoing back.
            context = {"form": UserCreationForm(), "closed": False, "wait_minutes": wait}
            response = render(request, "accounts/signup.html", context, status=throttle.TOO_MANY)
            response["Retry-After"] = str(wait * 60)
            return response
    return render(request, "accounts/signup.html", {"form": form, "closed": False})


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def profile(request: HttpRequest) -> HttpResponse:
    # The post_save signal makes one for every user; get_or_create covers users made before it.
    profile, _ = Profile.objects.get_or_create(user=request.user)
    form = ProfileForm(request.POST if request.method == "POST" else None, instance=profile)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Profile saved. Your next reply will use it.")
        return redirect("profile")
    # Read at request time, so tests (and a later per-user budget) can change the period.
    period = cast(Period, settings.TOKEN_BUDGET_PERIOD)
    now = timezone.now()
    start, resets_at = period_bounds(period, now)
    user_id = cast(int, request.user.pk)  # signed in: login_required
    # The budget is the one the turn checks, read from the same counters.
    budget = budget_for(user_id=user_id)
    context = {
        "form": form,
        "period_label": PERIOD_LABELS[period],
        "period_tokens": usage_for(user_id=user_id, since=start).tokens,
        "resets_at": resets_at,
        "resets_in": duration_text((budget.resets_at - now).total_seconds()),
        "budget": budget,
        "budget_left": max(0, budget.limit_tokens - budget.used_tokens)
        if budget.limit_tokens is not None
        else None,
        "recent_usage": usage_for(user_id=user_id, since=now - USAGE_WINDOW),
    }
    return render(request, "accounts/profile.html", context)
