"""A session that ends ends its sockets, on every worker (through the channel layer).

Logout names the session, so its sockets close at once. A user saved (password changed,
deactivated) or deleted asks each of the user's sockets to check its own session again, after
the change commits; a socket whose session no longer signs that user in closes. Whatever
slips between the change and the event, `turn_begin` checks in its own read, just before
it writes. A session that ends with no signal reaching the worker (its row deleted, its
expiry passed, a change made by another process without Redis) ends its sockets at the
worker's next round of checks (`worker._session_checks`).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import DatabaseError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from conversations import services
from conversations.db import db_call
from conversations.replies.outbox import Outbox

logger = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def _tell_sockets(user_id: int, event: dict[str, Any]) -> None:
    # Sync receivers always run off the event loop (Django runs them in a thread when it
    # sends a signal from async code), so async_to_sync is safe here.
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(user_group(user_id), event)
    except Exception:
        # The channel layer is away: the next chat.send on such a socket is refused.
        logger.warning("could not tell user %s's sockets that a session ended", user_id)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or request is None or not hasattr(request, "session"):
        return
    event = {"type": "session.ended", "session_key": request.session.session_key}
    _tell_sockets(user.pk, event)


@receiver(post_save, sender=get_user_model())
def _user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return  # a new user has no sockets; a login changes nothing a socket relies on
    user_id = instance.pk
    transaction.on_commit(lambda: _tell_sockets(user_id, {"type": "session.check"}))


@receiver(post_delete, sender=get_user_model())
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_id = instance.pk
    transaction.on_commit(lambda: _tell_sockets(user_id, {"type": "session.check"}))


# 4401 mirrors HTTP 401: the session ended (logout, password change, deactivation, deletion).
# The page asks the API whether it is still signed in, and goes to the login page if not.
SESSION_ENDED_CLOSE_CODE = 4401


class SessionEnds:
    """The socket side: the events above end the sockets whose session they end."""

    user_id: int
    session_key: str | None
    outbox: Outbox
    counted = False
    ending = False

    async def session_ended(self, event: dict[str, Any]) -> None:
        """A logout: the sockets of that session end, on every worker."""
        if self.counted and event.get("session_key") == self.session_key:
            await self.end_session()

    async def session_check(self, event: dict[str, Any]) -> None:
        """The user changed (password, deactivated, deleted): sockets whose session no longer
        signs that user in end, on every worker."""
        if not self.counted:
            return
        try:
            user_id = await db_call(services.session_user_id)(session_key=self.session_key)
        except DatabaseError:
            logger.warning("could not check a session; the next chat.send checks it again")
            return
        if user_id != self.user_id:
            await self.end_session()

    async def end_session(self) -> None:
        logger.info("closing a socket whose session ended (user %s)", self.user_id)
        self.ending = True
        # What is queued (the refusal, if any) goes first, then the close.
        self.outbox.finish(SESSION_ENDED_CLOSE_CODE)
