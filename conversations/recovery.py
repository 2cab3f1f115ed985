"""Saving replies whose worker died, or whose save failed, from the reply log in Redis."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings

from conversations import replylog, services
from conversations.context import ReplyInfo
from conversations.db import db_call
from conversations.llm.base import Usage
from conversations.streaming import done_frame, saved_done_frame

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "The server generating this reply stopped before it finished."


@dataclass(frozen=True)
class Recovered:
    message_id: str
    conversation_id: str
    status: str
    chars: int
    outcome: str  # "saved", "already saved", "conversation deleted", "would save", "failed"


async def _save(
    meta: replylog.GenerationMeta, *, text: str, status: str, error: str
) -> ReplyInfo | None:
    return await db_call(services.reply_save)(
        message_id=uuid.UUID(meta.message_id),
        conversation_id=uuid.UUID(meta.conversation_id),
        user_message_id=uuid.UUID(meta.user_message_id),
        content=text,
        status=status,
        input_tokens=None,
        output_tokens=None,
        error=error,
    )


async def recover_orphans(*, dry_run: bool = False) -> list[Recovered]:
    """Save each reply whose heartbeat stopped as `interrupted`, and retry failed saves."""
    results: list[Recovered] = []
    for meta in await replylog.orphans(grace=settings.HEARTBEAT_TTL):
        text, final = await replylog.log_text(meta.message_id)
        if dry_run:
            results.append(
                Recovered(
                    meta.message_id, meta.conversation_id, "interrupted", len(text), "would save"
                )
            )
            continue
        if not await replylog.lock_recovery(meta.message_id):
            continue  # another worker is on it
        if final is None:
            try:
                saved = await _save(meta, text=text, status="interrupted", error=INTERRUPTED_REASON)
            except Exception:
                logger.exception("recovery of reply %s failed; will retry", meta.message_id)
                results.append(
                    Recovered(
                        meta.message_id, meta.conversation_id, "interrupted", len(text), "failed"
                    )
                )
                continue
            # The row as saved: if the live worker saved first, its reply stands.
            final = (
                saved_done_frame(uuid.UUID(meta.conversation_id), saved)
                if saved is not None
                else done_frame(
                    uuid.UUID(meta.conversation_id),
                    uuid.UUID(meta.message_id),
                    status="interrupted",
                    content=text,
                    usage=Usage(),
                    error=INTERRUPTED_REASON,
                )
            )
            if saved is not None and saved.content.startswith(text) and saved.content != text:
                # The live worker saved more than its log holds (Redis was away for part of
                # the reply): followers get the rest as one more delta before chat.done.
                await replylog.append(
                    uuid.UUID(meta.message_id),
                    await replylog.last_seq(meta.message_id) + 1,
                    saved.content[len(text) :],
                )
            outcome = "saved" if saved else "conversation deleted"
        else:
            outcome = "already saved"
        await replylog.finish(meta, final)
        logger.warning("recovered reply %s of a dead worker (%s)", meta.message_id, outcome)
        results.append(
            Recovered(meta.message_id, meta.conversation_id, "interrupted", len(text), outcome)
        )
    for meta, status in await replylog.unsaved():
        text, _ = await replylog.log_text(meta.message_id)
        if dry_run:
            results.append(
                Recovered(meta.message_id, meta.conversation_id, status, len(text), "would save")
            )
            continue
        try:
            saved = await _save(meta, text=text, status=status, error="")
        except Exception:
            logger.exception("reply %s still cannot be saved", meta.message_id)
            results.append(
                Recovered(meta.message_id, meta.conversation_id, status, len(text), "failed")
            )
            continue
        await replylog.forget_unsaved(meta.message_id)
        results.append(
            Recovered(
                meta.message_id,
                meta.conversation_id,
                status,
                len(text),
                "saved" if saved else "conversation deleted",
            )
        )
    return results
