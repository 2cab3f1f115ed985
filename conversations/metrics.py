"""Prometheus metrics of this worker. Each worker serves its own /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OPEN_SOCKETS = Gauge("chat_open_sockets", "WebSockets open on this worker.")
GENERATIONS_IN_FLIGHT = Gauge("chat_generations_in_flight", "Replies being generated now.")
TURNS = Counter("chat_turns_total", "Finished turns by final status.", ["status"])
REFUSALS = Counter("chat_refusals_total", "Refused requests by chat.error code.", ["code"])
TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From chat.send received to the first delta sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS = Counter("chat_tokens_streamed_total", "Text deltas received from providers.")
FRAMES = Counter("chat_frames_streamed_total", "chat.delta frames built (after coalescing).")
DB_SECONDS = Histogram(
    "chat_turn_db_seconds",
    "Time a turn spends in its database calls (begin, save).",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
SAVE_RETRIES = Counter("chat_reply_save_retries_total", "Reply saves retried after a DB error.")
SAVE_FAILED = Counter("chat_reply_save_failed_total", "Replies whose save finally failed.")
PROVIDER_ERRORS = Counter(
    "chat_provider_errors_total", "Provider failures by provider and kind.", ["provider", "kind"]
)
