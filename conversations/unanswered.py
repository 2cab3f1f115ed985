"""User messages whose reply never started, and closing them with an empty `interrupted` reply.

Reply recovery (`manage.py recover_streams`) reaches these through `db_call`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from conversations.models import Conversation, Message


@dataclass(frozen=True)
class Unanswered:
    user_message_id: uuid.UUID
    conversation_id: uuid.UUID
    created_at: datetime


def unanswered_messages(
    *, older_than: timedelta, after: Unanswered | None = None, limit: int = 500
) -> list[Unanswered]:
    """User messages saved over `older_than` ago that have no reply row, oldest first.

    A turn saves the user's message, then its reply once the stream ends; a message with
    neither a reply row nor a generation in flight had its turn cut off in between (a
    worker killed, a start cancelled). `after` pages on from the previous batch.
    """
    found = Message.objects.filter(
        role=Message.Role.USER, created_at__lt=timezone.now() - older_than, children__isnull=True
    )
    if after is not None:
        found = found.filter(
            Q(created_at__gt=after.created_at)
            | Q(created_at=after.created_at, id__gt=after.user_message_id)
        )
    rows = found.order_by("created_at", "id").values_list("id", "conversation_id", "created_at")
    return [Unanswered(*row) for row in rows[:limit]]


@transaction.atomic
def unanswered_close(*, item: Unanswered, reply_id: uuid.UUID, error: str) -> bool:
    """Save an empty `interrupted` reply to `item`; False when its conversation is gone.

    Unlike a turn's save this leaves `updated_at` alone: a reply that never came is no
    activity, and must neither lift an old chat to the top of the list nor save it from
    pruning.
    """
    # The active path ends at the reply where it ended at the message.
    Conversation.objects.filter(
        id=item.conversation_id, current_leaf_id=item.user_message_id
    ).update(current_leaf_id=reply_id)
    if not Conversation.objects.filter(id=item.conversation_id).exists():
        return False
    Message.objects.get_or_create(
        id=reply_id,
        defaults={
            "conversation_id": item.conversation_id,
            "parent_id": item.user_message_id,
            "role": Message.Role.ASSISTANT,
            "content": "",
            "status": Message.Status.INTERRUPTED,
            "error": error,
        },
    )
    return True
