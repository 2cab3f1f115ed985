from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.http import HttpRequest

from accounts.models import GroupTokenBudget, Profile, UserTokenBudget

User = get_user_model()


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ["display_name", "about", "updated_at"]
    readonly_fields = ["updated_at"]
    # One profile per user, so the heading is the singular name.
    verbose_name = verbose_name_plural = "what the assistant may know about this user"


class TokenBudgetForm(forms.ModelForm):
    """Tokens per period, or "no limit": an empty inline form is never saved, so "no limit"
    is a box to tick rather than an empty number."""

    no_limit = forms.BooleanField(required=False, label="No limit")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["no_limit"].initial = self.instance.tokens is None
        self.fields["tokens"].help_text = "Tokens per period (TOKEN_BUDGET_PERIOD)."

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if cleaned.get("no_limit"):
            cleaned["tokens"] = None
        elif cleaned.get("tokens") is None and not self.errors:
            self.add_error("tokens", "Give a number of tokens, or tick No limit.")
        return cleaned


class UserTokenBudgetInline(admin.StackedInline):
    model = UserTokenBudget
    form = TokenBudgetForm
    fields = ["tokens", "no_limit"]
    verbose_name = verbose_name_plural = (
        "token budget (overrides the user's groups and the default)"
    )


class GroupTokenBudgetInline(admin.StackedInline):
    model = GroupTokenBudget
    form = TokenBudgetForm
    fields = ["tokens", "no_limit"]
    verbose_name = verbose_name_plural = (
        "token budget (a member gets the most generous of their groups' budgets)"
    )


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    list_display = ["name", "budget_shown"]
    list_select_related = ["budget"]
    inlines = [GroupTokenBudgetInline]

    @admin.display(description="token budget", ordering="budget__tokens")
    def budget_shown(self, group: Group) -> str:
        budget = getattr(group, "budget", None)
        if budget is None:
            return "default"
        return "no limit" if budget.tokens is None else f"{budget.tokens:,}"


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
        return [ProfileInline, UserTokenBudgetInline] if obj is not None else []

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
