"""The ids a log line carries: set per turn, read by the logging filter."""

from __future__ import annotations

import contextvars
import logging

turn_id: contextvars.ContextVar[str] = contextvars.ContextVar("turn_id", default="-")
conversation_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "conversation_id", default="-"
)


class TurnIdsFilter(logging.Filter):
    """Adds `turn_id` and `conversation_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn_id = turn_id.get()
        record.conversation_id = conversation_id.get()
        return True
