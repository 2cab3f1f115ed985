from __future__ import annotations

from django.contrib import admin

from accounts.models import Profile


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "display_name", "updated_at"]
    search_fields = ["user__username", "display_name"]
    readonly_fields = ["updated_at"]
