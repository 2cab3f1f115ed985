from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from personas.models import Persona


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The end of the active path: the prompt's history and the page follow it from the root.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Error"
        INTERRUPTED = "interrupted", "Interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    client_id = models.UUIDField(null=True, blank=True)
    # The conversation's owner, on user messages: it lets the database hold one message per
    # user and client_id, whichever conversation the re-send names (or none, for a new one).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    # The tree: a reply's parent is the user message it answers; a user message's parent is
    # the reply it follows (None for a first message). Children of one parent are versions.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    # The owner's rating of a reply: 1, -1, or None when unrated.
    rating = models.SmallIntegerField(null=True, blank=True)
    rating_comment = models.TextField(blank=True)
    rated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "client_id"],
                condition=Q(role="user"),
                name="message_unique_owner_client_id",
            ),
            models.CheckConstraint(
                condition=Q(client_id__isnull=True) | Q(owner__isnull=False),
                name="message_client_id_has_owner",
            ),
            models.CheckConstraint(
                condition=Q(role="user") | Q(parent__isnull=False),
                name="message_reply_has_parent",
            ),
            models.CheckConstraint(
                condition=Q(rating__isnull=True) | Q(rating__in=[1, -1]),
                name="message_rating_values",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_conversation_time"),
            models.Index(fields=["parent", "created_at"], name="message_parent_time"),
            models.Index(
                fields=["rated_at"], condition=Q(rating__isnull=False), name="message_rated"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class TokenUsage(models.Model):
    """Tokens of a user's saved replies per persona and UTC day, counted in the reply's own
    transaction: the budget check sums a period's rows in one indexed statement, exact
    whatever worker saved them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(fields=["user", "persona", "day"], name="token_usage_unique")
        ]
        indexes = [models.Index(fields=["user", "day"], name="token_usage_user_day")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day}: {self.tokens}"
