from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import HttpRequest

from accounts.models import Profile

User = get_user_model()


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ["display_name", "about", "updated_at"]
    readonly_fields = ["updated_at"]
    # One profile per user, so the heading is the singular name.
    verbose_name = verbose_name_plural = "what the assistant may know about this user"


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ["username", "display_name", "email", "is_staff", "is_active", "last_login"]
    list_select_related = ["profile"]
    search_fields = ["username", "email", "profile__display_name"]

    def get_inlines(
        self, request: HttpRequest, obj: Any | None
    ) -> list[type[admin.options.InlineModelAdmin[Any, Any]]]:
        # On the add page a signal creates the profile when the user is saved; an inline
        # there would try to create a second one.
        return [ProfileInline] if obj is not None else []

    @admin.display(description="display name", ordering="profile__display_name")
    def display_name(self, user: Any) -> str:
        profile = getattr(user, "profile", None)
        return profile.display_name if profile is not None else ""


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "display_name", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "display_name"]
    readonly_fields = ["updated_at"]
