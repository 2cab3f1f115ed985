"""Share links: the snapshot of a conversation's active path, finding a share by its token,
and a reader's copy of it (a fork) to continue.

The snapshot is copied into the share, not read live, so what the owner writes later stays
private until they share again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from attachments.models import Attachment, Upload
from attachments.serve import attachments_by_message
from conversations import serializers
from conversations.errors import Forbidden, Invalid, NotFound
from conversations.models import Conversation, Message
from conversations.services import conversation_lock
from personas.models import Persona
from sharing.models import Share

# secrets.token_urlsafe(32): 256 random bits, 43 characters of URL-safe base64.
TOKEN_BYTES = 32
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
STATUSES = frozenset(Message.Status.values)
NO_REPLY_SHARED = "No reply to this message was shared. Retry it to get one."


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def share_find(token: str) -> Share | None:
    """The share this token opens, or None: unknown, revoked and malformed alike.

    The lookup goes by digest, so how long it takes says nothing about how much of a guess
    was right. A malformed token (any length, any character) still costs one digest lookup
    of its own, so it is answered in the same time as a well-formed unknown one.
    """
    well_formed = TOKEN_SHAPE.fullmatch(token) is not None
    digest = token_digest(token if well_formed else "")
    found = Share.objects.select_related("conversation").filter(digest=digest).first()
    return found if well_formed else None


def _worth_sharing(message: Message) -> bool:
    # A reply with no text (it failed or was cut off before its first word) says nothing a
    # reader needs; a stopped or failed reply with text is shown, with its status.
    return message.role == Message.Role.USER or bool(message.content.strip())


def share_snapshot(conversation: Conversation) -> dict[str, Any]:
    """The active path as it is now, with only what a reader may see: no ids of the tree,
    no versions, ratings or usage, nothing of the owner."""
    tree = serializers.conversation_tree(conversation.id)
    path = serializers.shown_path(conversation, tree).path
    messages = [m for m in serializers.path_messages(path) if _worth_sharing(m)]
    uploads = attachments_by_message(m.id for m in messages)
    persona = conversation.persona
    return {
        "title": conversation.title,
        "persona": {
            "name": persona.name,
            "avatar": persona.avatar,
            "description": persona.description,
        },
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "created_at": m.created_at.isoformat(),
                "attachments": [str(upload.id) for upload in uploads.get(m.id, [])],
            }
            for m in messages
        ],
    }


@transaction.atomic
def share_save(*, conversation: Conversation) -> Share:
    """Share the active path as it is now. Sharing again replaces the snapshot and keeps the
    link: readers who have it see the new snapshot. Locked as a delete locks it, so a
    conversation deleted meanwhile is not found (its share would fail the foreign-key check
    at commit), and a delete that comes after takes the share with it."""
    if not conversation_lock(conversation_id=conversation.id):
        raise NotFound("No such conversation.")
    snapshot = share_snapshot(conversation)
    if not snapshot["messages"]:
        raise Invalid("This conversation has no messages to share yet.")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    share, _ = Share.objects.update_or_create(
        conversation=conversation,
        defaults={"snapshot": snapshot, "created_at": timezone.now()},
        create_defaults={
            "snapshot": snapshot,
            "created_at": timezone.now(),
            "token": token,
            "digest": token_digest(token),
        },
    )
    return share


@transaction.atomic
def share_revoke(*, conversation: Conversation) -> None:
    Share.objects.filter(conversation=conversation).delete()


def snapshot_upload_ids(share: Share) -> set[str]:
    return {
        upload_id
        for message in share.snapshot.get("messages", [])
        for upload_id in message.get("attachments", [])
    }


def share_uploads(share: Share) -> dict[str, Upload]:
    """The snapshot's uploads that still exist, by id: only the sharer's own rows, so a
    snapshot can never name someone else's file."""
    found = Upload.objects.filter(
        id__in=list(snapshot_upload_ids(share)), owner_id=share.conversation.owner_id
    )
    return {str(upload.id): upload for upload in found}


def share_upload(share: Share, upload_id: uuid.UUID) -> Upload | None:
    """One upload, only if the snapshot lists it."""
    if str(upload_id) not in snapshot_upload_ids(share):
        return None
    return Upload.objects.filter(id=upload_id, owner_id=share.conversation.owner_id).first()


def _upload_copy(upload: Upload, owner: User) -> Upload:
    # A row of the reader's own naming the same stored object: the object goes only once no
    # row names it, so neither side's deletions take the other's file away.
    return Upload(
        owner=owner,
        name=upload.name,
        kind=upload.kind,
        content_type=upload.content_type,
        size=upload.size,
        file=upload.file.name,
        text=upload.text,
        width=upload.width,
        height=upload.height,
    )


def _status(value: Any) -> str:
    return value if value in STATUSES else Message.Status.COMPLETE


@transaction.atomic
def share_fork(*, share: Share, reader: User) -> Conversation:
    """A new conversation of the reader holding a copy of the snapshot as one chain, to go
    on with: the same persona, the files as the reader's own uploads. All or nothing."""
    persona_id = share.conversation.persona_id
    if not Persona.objects.usable_by(reader.pk).filter(pk=persona_id).exists():
        raise Forbidden(
            "You can't continue this chat: its persona isn't available to you. "
            "You can still read it here."
        )
    snapshot = share.snapshot
    conversation = Conversation.objects.create(
        owner=reader, persona_id=persona_id, title=str(snapshot.get("title", ""))[:200]
    )
    originals = share_uploads(share)
    copies: dict[str, Upload] = {}
    messages: list[Message] = []
    attached: list[tuple[Message, list[str]]] = []
    parent_id: uuid.UUID | None = None
    for item in snapshot.get("messages", []):
        is_user = item.get("role") == Message.Role.USER
        if is_user and messages and messages[-1].role == Message.Role.USER:
            messages.append(_no_reply(conversation, parent_id))
            parent_id = messages[-1].id
        message = Message(
            id=uuid.uuid4(),
            conversation=conversation,
            role=Message.Role.USER if is_user else Message.Role.ASSISTANT,
            content=str(item.get("content", "")),
            status=Message.Status.COMPLETE if is_user else _status(item.get("status")),
            owner=reader if is_user else None,
            parent_id=parent_id,
        )
        messages.append(message)
        parent_id = message.id
        ids = [i for i in item.get("attachments", []) if i in originals]
        if is_user and ids:
            attached.append((message, ids))
            for upload_id in ids:
                copies.setdefault(upload_id, _upload_copy(originals[upload_id], reader))
    if messages and messages[-1].role == Message.Role.USER:
        messages.append(_no_reply(conversation, parent_id))
    # One statement each; the parent links point within the batch, which PostgreSQL checks
    # at commit (Django's foreign keys are deferred there).
    Message.objects.bulk_create(messages)
    _keep_order(messages)
    Upload.objects.bulk_create(copies.values())
    Attachment.objects.bulk_create(
        Attachment(message=message, upload=copies[upload_id], position=position)
        for message, ids in attached
        for position, upload_id in enumerate(ids)
    )
    if messages:
        Conversation.objects.filter(pk=conversation.pk).update(current_leaf_id=messages[-1].id)
        conversation.current_leaf = messages[-1]
    return conversation


def _no_reply(conversation: Conversation, parent_id: uuid.UUID | None) -> Message:
    # The snapshot leaves out replies without a word, so two questions may stand in a row
    # or one at the end. In a chat a question always follows a reply (an edit is sent after
    # the reply before it, a new message after the last one), so the copy gets an empty
    # interrupted reply there, as recovery gives a reply that never came, to retry.
    return Message(
        id=uuid.uuid4(),
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content="",
        status=Message.Status.INTERRUPTED,
        error=NO_REPLY_SHARED,
        parent_id=parent_id,
    )


def _keep_order(messages: list[Message]) -> None:
    """Give the chain's rows times a microsecond apart, in chain order: a bulk insert stamps
    them all alike, and lists by time (the JSON export) would then shuffle them."""
    start = timezone.now()
    for index, message in enumerate(messages):
        message.created_at = start + timedelta(microseconds=index)
    # bulk_update writes the values given: auto_now_add only stamps inserts.
    Message.objects.bulk_update(messages, ["created_at"], batch_size=500)
