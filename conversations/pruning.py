"""Deleting conversations nobody has touched for a while (`manage.py prune_conversations`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from conversations.maintenance import Progress, owner_filter
from conversations.models import Conversation, Message


@dataclass(frozen=True)
class PruneResult:
    conversations: int
    messages: int
    dry_run: bool


def conversations_prune(
    *,
    older_than: timedelta,
    username: str | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> PruneResult:
    """Delete conversations (and their messages) untouched for longer than `older_than`.

    "Untouched" is `updated_at`, which every turn bumps, so a conversation in use is never old.
    """
    cutoff = timezone.now() - older_than
    old = Conversation.objects.filter(owner_filter(username), updated_at__lt=cutoff)
    total = old.count()
    if dry_run:
        messages = Message.objects.filter(conversation__in=old).count()
        return PruneResult(conversations=total, messages=messages, dry_run=True)
    deleted_conversations = deleted_messages = 0
    while True:
        # One short transaction per batch: no long lock, no huge rollback, and a run that is
        # interrupted keeps what it already deleted.
        with transaction.atomic():
            # Locked as turns lock them (turn_begin, reply_save), so a turn on an old chat
            # (a regenerate, a late reply) either commits first, and PostgreSQL checks the
            # cutoff again on the row it wrote, leaving the chat out; or waits, and finds
            # it gone. Unlocked, the turn's new message could land after the delete had
            # collected the messages, and the batch would fail its foreign-key check.
            ids = list(
                old.order_by("pk")
                .select_for_update(of=("self",))
                .values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                break
            # The whole tree goes with its conversation: every message has the conversation
            # as its foreign key, so `parent` and `current_leaf` between rows that are all
            # deleted together never hold anything back (Django's constraints are checked
            # at commit). Per batch a fixed handful of statements, holding only ids in memory.
            _, per_model = Conversation.objects.filter(pk__in=ids).delete()
        deleted_conversations += per_model.get(Conversation._meta.label, 0)
        deleted_messages += per_model.get(Message._meta.label, 0)
        if progress is not None:
            progress(deleted_conversations, total)
        # No early stop on a short batch: rows left out by the re-check shorten a batch
        # while old ones may remain.
    return PruneResult(deleted_conversations, deleted_messages, dry_run=False)
