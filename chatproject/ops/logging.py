"""Log formats: one JSON object per line in production, readable text in development.

Both carry `turn_id` and `conversation_id`, which `conversations.logctx.TurnIdsFilter` puts on
every record, so one turn's lines can be found across a worker's interleaved output.
settings.LOGGING names these classes by dotted path; nothing here imports Django.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is kept.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "turn_id", "conversation_id"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "turn_id": getattr(record, "turn_id", "-"),
            "conversation_id": getattr(record, "conversation_id", "-"),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray object in `extra=` must never cost the log line.
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)-7s %(name)s [turn=%(turn_id)s conv=%(conversation_id)s] "
            "%(message)s",
            # Records that skipped the filter (a handler configured elsewhere) still format.
            defaults={"turn_id": "-", "conversation_id": "-"},
        )


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The dictConfig for settings.LOGGING; `log_format` is "json" or "text"."""
    if log_format not in {"json", "text"}:
        raise ValueError(f"LOG_FORMAT must be json or text, not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"turn_ids": {"()": "conversations.logctx.TurnIdsFilter"}},
        "formatters": {
            "json": {"()": "chatproject.ops.logging.JsonFormatter"},
            "text": {"()": "chatproject.ops.logging.TextFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["turn_ids"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's default config gives these handlers of its own; clearing them sends
            # their lines through ours once, in our format.
            "django": {"handlers": [], "level": "INFO", "propagate": True},
            "django.server": {"handlers": [], "level": "INFO", "propagate": True},
            # At LOG_LEVEL=DEBUG we want the chat's debug lines, not every library's.
            "asyncio": {"level": "INFO"},
            "daphne": {"level": "INFO"},
            "twisted": {"level": "INFO"},
            "httpcore": {"level": "INFO"},
            "httpx": {"level": "INFO"},
            # psycopg's pool logs every checkout and return at INFO.
            "psycopg": {"level": "WARNING"},
        },
    }
