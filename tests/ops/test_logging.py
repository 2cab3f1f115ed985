"""Logs: one JSON object per line in production, text in development, ids on every line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from chatproject.ops.logging import JsonFormatter, TextFormatter, logging_config
from conversations import logctx
from conversations.logctx import TurnIdsFilter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    log_record = logging.LogRecord(
        "conversations.replies.start", logging.DEBUG, "", 1, message, args, None
    )
    for key, value in extra.items():
        setattr(log_record, key, value)
    TurnIdsFilter().filter(log_record)
    return log_record


def test_json_lines_carry_the_turn_and_conversation_ids() -> None:
    turn = logctx.turn_id.set("turn-1")
    chat = logctx.conversation_id.set("chat-1")
    try:
        line = JsonFormatter().format(record("saved in %.1f ms", 1.25, attempt=2))
    finally:
        logctx.turn_id.reset(turn)
        logctx.conversation_id.reset(chat)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "saved in 1.2 ms"
    assert (entry["turn_id"], entry["conversation_id"]) == ("turn-1", "chat-1")
    assert (entry["level"], entry["logger"]) == ("DEBUG", "conversations.replies.start")
    assert entry["attempt"] == 2  # `extra=` fields are kept
    assert entry["time"].endswith("+00:00")


def test_json_keeps_the_traceback_inside_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("it failed")
        failed.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(failed))
    assert entry["exception"].splitlines()[-1] == "ValueError: boom"


def test_text_lines_are_readable_and_carry_the_ids() -> None:
    line = TextFormatter().format(record("turn begin: database work ends"))
    assert line.endswith(
        "DEBUG   conversations.replies.start [turn=- conv=-] turn begin: database work ends"
    )


def test_the_format_follows_the_environment(settings) -> None:
    # Tests run with DJANGO_DEBUG unset (true): text, unless LOG_FORMAT says otherwise.
    assert settings.LOGGING["handlers"]["console"]["formatter"] == settings.LOG_FORMAT
    assert logging_config(log_format="json", level="INFO")["handlers"]["console"] == {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["turn_ids"],
    }
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config(log_format="xml", level="INFO")


@pytest.fixture
def chat_debug_log() -> Iterator[io.StringIO]:
    """The chat's loggers at DEBUG into a JSON stream, as production would write them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TurnIdsFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("conversations")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_turn_logs_its_database_work_with_its_ids(
    ws, alice, persona, fast_demo, chat_debug_log
):
    socket = await ws(alice)
    await socket.send_message("Log me")
    frames = await socket.receive_until("chat.done")
    accepted = frames[0]

    entries = [json.loads(line) for line in chat_debug_log.getvalue().splitlines()]
    ours = [
        e
        for e in entries
        if e["turn_id"] == accepted["message_id"]
        and e["conversation_id"] == accepted["conversation_id"]
    ]
    messages = [e["message"] for e in ours]
    assert "turn begin: database work ends" in messages
    assert "turn save: database work begins" in messages
    assert any(m.startswith("turn save: database work ends") for m in messages)
    assert all(e["level"] == "DEBUG" for e in ours if "database work" in e["message"])
