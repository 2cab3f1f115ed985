from __future__ import annotations

from django.conf import settings
from django.db import models


class Profile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    display_name = models.CharField(max_length=80, blank=True)
    about = models.TextField(
        max_length=2000,
        blank=True,
        help_text="What the assistant may know about you: work, interests, how you like answers.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.display_name or str(self.user)


class GroupTokenBudget(models.Model):
    """TOKEN_BUDGET for the members of a group; a user gets the most generous of theirs."""

    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="budget")
    tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per period. Empty: no limit."
    )

    def __str__(self) -> str:
        return f"{self.group}: {self.tokens if self.tokens is not None else 'no limit'}"


class UserTokenBudget(models.Model):
    """TOKEN_BUDGET for one user: it wins over the user's groups and the default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_budget"
    )
    tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per period. Empty: no limit."
    )

    def __str__(self) -> str:
        return f"{self.user}: {self.tokens if self.tokens is not None else 'no limit'}"
