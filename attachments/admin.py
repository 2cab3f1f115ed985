from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from attachments.limits import size_text
from attachments.models import Upload
from attachments.services import objects_release


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    """Uploads as they were accepted: to look at, or to delete (an abusive file). They come
    only through the upload API, which judges their content, so there is no add or edit."""

    list_display = ("name", "owner", "kind", "size_shown", "created_at")
    list_filter = ("kind", "created_at")
    search_fields = ("name", "owner__username", "=id")
    list_select_related = ("owner",)
    date_hierarchy = "created_at"
    readonly_fields = (
        "id",
        "owner",
        "name",
        "kind",
        "content_type",
        "size",
        "stored_as",
        "width",
        "height",
        "created_at",
        "text",
    )
    # The owner's account page is not for opening from here; the text can be long.
    fields = readonly_fields

    @admin.display(description="stored as")
    def stored_as(self, upload: Upload) -> str:
        # The name only: a link would be the storage's own URL (nothing under MEDIA_URL is
        # served; an S3 one bypasses the download's nosniff and sandbox).
        return upload.file.name

    @admin.display(description="size", ordering="size")
    def size_shown(self, upload: Upload) -> str:
        return size_text(upload.size)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Upload | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Upload) -> None:
        name = obj.file.name
        super().delete_model(request, obj)
        objects_release([name])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        names = list(queryset.values_list("file", flat=True))
        super().delete_queryset(request, queryset)
        objects_release(names)
