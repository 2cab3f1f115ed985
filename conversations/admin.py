"""Read-only moderation views: staff can find and read conversations, not rewrite them."""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.http import content_disposition_header

from conversations.models import Conversation, Message, TokenUsage
from conversations.reports import PERIODS, parse_period, usage_report, usage_report_csv


class ReadOnlyMixin:
    """Nothing here is added or edited through admin: the chat's own code writes these rows."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(ReadOnlyMixin, admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = readonly_fields = (
        "created_at",
        "role",
        "status",
        "content",
        "output_tokens",
        "rating",
        "error",
    )
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["created_at"]


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["title_shown", "owner", "persona", "message_count", "created_at", "updated_at"]
    list_filter = ["persona", "updated_at"]
    list_select_related = ["owner", "persona"]
    # "user" is the owner's username or display name; "text" is the title or any message.
    search_fields = [
        "owner__username",
        "owner__profile__display_name",
        "title",
        "messages__content",
    ]
    search_help_text = "Search by username, display name, title or message text."
    date_hierarchy = "updated_at"
    fields = readonly_fields = (
        "id",
        "owner",
        "persona",
        "title",
        "current_leaf",
        "created_at",
        "updated_at",
    )
    inlines = [MessageInline]
    show_full_result_count = False  # a full COUNT(*) over every conversation on each page

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(messages_total=Count("messages"))

    @admin.display(description="title", ordering="title")
    def title_shown(self, conversation: Conversation) -> str:
        return conversation.title or "(untitled)"

    @admin.display(description="messages", ordering="messages_total")
    def message_count(self, conversation: Conversation) -> int:
        return int(getattr(conversation, "messages_total", 0))


RATING_SHOWN = {1: "👍", -1: "👎"}


class RatingFilter(admin.SimpleListFilter):
    title = "rating"
    parameter_name = "rating"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("up", "👍"), ("down", "👎"), ("unrated", "unrated replies")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        match self.value():
            case "up":
                return queryset.filter(rating=1)
            case "down":
                return queryset.filter(rating=-1)
            case "unrated":
                # Only replies can be rated: user messages are not "unrated", they are n/a.
                return queryset.filter(role=Message.Role.ASSISTANT, rating__isnull=True)
        return queryset


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "snippet",
        "role",
        "status",
        "rating_shown",
        "comment_snippet",
        "owner",
        "conversation",
        "created_at",
    ]
    list_filter = [RatingFilter, "role", "status", "created_at"]
    list_select_related = ["conversation__owner"]
    search_fields = [
        "content",
        "rating_comment",
        "conversation__owner__username",
        "conversation__title",
    ]
    search_help_text = "Search by message text, rating comment, username or conversation title."
    date_hierarchy = "created_at"
    fields = readonly_fields = (
        "id",
        "conversation",
        "role",
        "status",
        "content",
        "parent",
        "client_id",
        "input_tokens",
        "output_tokens",
        "rating",
        "rating_comment",
        "rated_at",
        "error",
        "created_at",
    )
    show_full_result_count = False

    @admin.display(description="rating", ordering="rating")
    def rating_shown(self, message: Message) -> str:
        return RATING_SHOWN.get(message.rating or 0, "")

    @admin.display(description="comment")
    def comment_snippet(self, message: Message) -> str:
        # Plain text: the admin escapes what a display method returns unless it is marked safe.
        text = " ".join(message.rating_comment.split())
        return text[:80] + ("…" if len(text) > 80 else "")

    @admin.display(description="message")
    def snippet(self, message: Message) -> str:
        text = " ".join(message.content.split())
        return text[:80] + ("…" if len(text) > 80 else "")

    @admin.display(description="user", ordering="conversation__owner__username")
    def owner(self, message: Message) -> str:
        return str(message.conversation.owner)


# Rows the page shows; the CSV download has them all.
REPORT_ROWS_SHOWN = 500


@admin.register(TokenUsage)
class TokenUsageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The usage report: tokens per user, per persona, per day this period, and the top
    users, from the counters the budget check reads. ?period=day|week|month, ?format=csv."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            return super().changelist_view(request, extra_context)  # its own 403
        try:
            period = parse_period(request.GET.get("period"), settings.TOKEN_BUDGET_PERIOD)
        except ValueError:
            period = parse_period(None, settings.TOKEN_BUDGET_PERIOD)
        report = usage_report(period=period)
        if request.GET.get("format") == "csv":
            out = io.StringIO()
            usage_report_csv(report, out)
            filename = f"token-usage-{period}-{report.start:%Y-%m-%d}.csv"
            return HttpResponse(
                out.getvalue(),
                content_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": content_disposition_header(True, filename)},
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Token usage",
            "opts": self.model._meta,
            "report": report,
            "periods": PERIODS,
            "rows": report.rows[:REPORT_ROWS_SHOWN],
            "rows_left_out": max(0, len(report.rows) - REPORT_ROWS_SHOWN),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/conversations/usage_report.html", context)
