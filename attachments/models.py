"""Files users attach to their messages: judged by content, stored through Django's storage API."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Upload(models.Model):
    """A file as it was accepted: images re-encoded, text and PDF with their text extracted.

    `file` names an object in the default storage; a forked share gives the reader rows of
    their own naming the same object, so an object goes only when no row names it.
    """

    class Kind(models.TextChoices):
        IMAGE = "image", "Image"
        TEXT = "text", "Text"
        PDF = "pdf", "PDF"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    # The sender's file name, cleaned of any path: shown and offered on download, never a path.
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()  # bytes as stored
    file = models.FileField(max_length=255)
    # Text files' content and PDFs' extracted text: what the model reads.
    text = models.TextField(blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="image") | Q(width__isnull=True),
                name="upload_only_images_have_pixels",
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="upload_owner_recent"),
            models.Index(fields=["file"], name="upload_file"),
        ]

    def __str__(self) -> str:
        return self.name


class Attachment(models.Model):
    """An upload on a user message, in the order the user attached it."""

    message = models.ForeignKey(
        "conversations.Message", on_delete=models.CASCADE, related_name="attachments"
    )
    # RESTRICT: an upload in use cannot go, except with its message (a user's deletion).
    upload = models.ForeignKey(Upload, on_delete=models.RESTRICT, related_name="attachments")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["message", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["message", "position"], name="attachment_unique_position"
            ),
            models.UniqueConstraint(fields=["message", "upload"], name="attachment_unique_upload"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} #{self.position}"
