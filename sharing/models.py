"""Read-only links to a snapshot of a conversation's active path."""

from __future__ import annotations

import uuid

from django.db import models


class Share(models.Model):
    """One link per conversation: sharing again replaces the snapshot, keeping the link.

    Lookups go by `digest` (SHA-256 of the token), so the time a lookup takes says nothing
    about how much of a guessed token was right. The token itself is kept so its owner can
    copy the link again.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.OneToOneField(
        "conversations.Conversation", on_delete=models.CASCADE, related_name="share"
    )
    token = models.CharField(max_length=64, unique=True)
    digest = models.CharField(max_length=64, unique=True)
    # {"title", "persona": {"name", "avatar"}, "messages": [{"role", "content",
    # "created_at", "attachments": [upload id, ...]}]}: copied, so later changes stay private.
    snapshot = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"share of {self.conversation_id}"
