"""Saving replies whose worker died, or whose save failed, from the reply log in Redis."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

from conversations import services, unanswered
from conversations.context import ReplyInfo
from conversations.db import db_call
from conversations.llm.base import Usage
from conversations.replies import replylog
from conversations.replies.generation import save_reply
from conversations.replies.protocol import done_frame, saved_done_frame
from conversations.replies.registry import registry
from conversations.unanswered import Unanswered

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "The server generating this reply stopped before it finished."
UNANSWERED_REASON = "The reply to this message was never started. Please send it again."
UNANSWERED_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class Recovered:
    message_id: str
    conversation_id: str
    status: str
    chars: int
    # "saved", "already saved", "closed unanswered", "conversation deleted", "would save",
    # "would close", "failed"
    outcome: str


async def _save(
    meta: replylog.GenerationMeta, *, text: str, status: str, error: str
) -> ReplyInfo | None:
    # One try: a recovery round that fails is simply tried again the next round.
    return await save_reply(
        message_id=uuid.UUID(meta.message_id),
        conversation_id=uuid.UUID(meta.conversation_id),
        user_message_id=uuid.UUID(meta.user_message_id),
        content=text,
        status=status,
        usage=Usage(),
        error=error,
        retry_for=0,
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


async def _reply_in_flight(item: Unanswered) -> bool:
    """Whether the message's reply is being generated here or, by the reply log, anywhere."""
    running = registry.get(item.conversation_id)
    if running is not None and running.ctx.user_message_id == item.user_message_id:
        return True
    remote = await replylog.active(item.conversation_id)
    return remote is not None and remote.user_message_id == str(item.user_message_id)


async def close_unanswered(
    *, older_than: timedelta = UNANSWERED_AGE, dry_run: bool = False, batch_size: int = 500
) -> list[Recovered]:
    """Give each user message that never got a reply an empty `interrupted` one.

    Left alone: messages younger than `older_than` (their turn may still be starting), those
    whose reply is in flight, and those whose reply waits in the reply log for its save.
    """
    waiting = {meta.user_message_id for meta, _ in await replylog.unsaved()}
    results: list[Recovered] = []
    after = None
    while True:
        batch = await db_call(unanswered.unanswered_messages)(
            older_than=older_than, after=after, limit=batch_size
        )
        for item in batch:
            if str(item.user_message_id) in waiting or await _reply_in_flight(item):
                continue
            results.append(await _close(item, dry_run=dry_run))
        if len(batch) < batch_size:
            return results
        after = batch[-1]


async def _close(item: Unanswered, *, dry_run: bool) -> Recovered:
    # Saved under the id a turn would give the reply: a late generation finds this row.
    reply_id = services.reply_id_for(item.user_message_id)

    def result(outcome: str) -> Recovered:
        return Recovered(str(reply_id), str(item.conversation_id), "interrupted", 0, outcome)

    if dry_run:
        return result("would close")
    try:
        closed = await db_call(unanswered.unanswered_close)(
            item=item, reply_id=reply_id, error=UNANSWERED_REASON
        )
    except Exception:
        logger.exception("closing unanswered message %s failed", item.user_message_id)
        return result("failed")
    logger.warning("closed unanswered message %s as interrupted", item.user_message_id)
    return result("closed unanswered" if closed else "conversation deleted")
