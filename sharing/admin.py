"""Shares in admin: staff can find a link and revoke it, never write a snapshot."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from sharing.models import Share
from sharing.serializers import page_path


@admin.register(Share)
class ShareAdmin(admin.ModelAdmin):
    list_display = ["conversation_title", "owner", "created_at", "link"]
    list_select_related = ["conversation__owner"]
    search_fields = ["conversation__title", "conversation__owner__username"]
    search_help_text = "Search by conversation title or the owner's username."
    date_hierarchy = "created_at"
    fields = readonly_fields = ("conversation", "owner", "created_at", "link", "snapshot_shown")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # "Revoke" says what deleting a share does; the generic delete would say it twice.
        found = super().get_actions(request)
        found.pop("delete_selected", None)
        return found

    @admin.action(description="Revoke the selected links", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Share]) -> None:
        count, _ = queryset.delete()
        self.message_user(
            request, f"Revoked {count} link(s): they answer “not found” now.", messages.SUCCESS
        )

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_title(self, share: Share) -> str:
        return share.conversation.title or "(untitled)"

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, share: Share) -> str:
        return share.conversation.owner.get_username()

    @admin.display(description="link")
    def link(self, share: Share) -> str:
        path = page_path(share.token)
        return format_html('<a href="{}" rel="noreferrer" target="_blank">{}</a>', path, path)

    @admin.display(description="snapshot")
    def snapshot_shown(self, share: Share) -> str:
        text = json.dumps(share.snapshot, indent=2, ensure_ascii=False)
        return format_html("<pre>{}</pre>", text)
