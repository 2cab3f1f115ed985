"""Prometheus metrics of this worker. Each worker serves its own /metrics."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import DEFAULT_DB_ALIAS, connections
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OPEN_SOCKETS = Gauge("chat_open_sockets", "WebSockets open on this worker.")
TURN_BEGINS_WAITING = Gauge(
    "chat_turn_begins_waiting", "Turn begins queued for a place (TURN_BEGINS_AT_ONCE)."
)
TURN_CONNECTIONS_IN_USE = Gauge(
    "chat_db_turn_connections_in_use",
    "The event loop's connections running a turn's statements now (at most DB_CALL_THREADS).",
)
TURN_CONNECTIONS_IDLE = Gauge(
    "chat_db_turn_connections_idle", "The event loop's connections kept open, unused."
)
GENERATIONS_IN_FLIGHT = Gauge("chat_generations_in_flight", "Replies being generated now.")
TURNS = Counter("chat_turns_total", "Finished turns by final status.", ["status"])
REFUSALS = Counter("chat_refusals_total", "Refused requests by chat.error code.", ["code"])
TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From chat.send received to the first delta sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SOCKET_QUEUED_BYTES = Gauge(
    "chat_socket_queued_bytes",
    "Frames waiting in sockets' outboxes for their clients, in bytes (bounded per socket).",
)
SOCKET_SERVER_BYTES = Gauge(
    "chat_socket_server_buffered_bytes",
    "Bytes the ASGI server holds for sockets' clients (its transport buffers).",
)
SLOW_SOCKETS_DROPPED = Counter(
    "chat_slow_sockets_dropped_total",
    "Sockets closed (code 4008) for falling too far behind their frames.",
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


# Metric name -> (psycopg_pool get_stats() key, help).
_POOL_STATS = {
    "chat_db_pool_size": ("pool_size", "Connections the pool holds now, in use or idle."),
    "chat_db_pool_available": ("pool_available", "Idle connections ready in the pool."),
    "chat_db_pool_waiting": (
        "requests_waiting",
        "Requests waiting for a connection; above 0 the pool is exhausted.",
    ),
    "chat_db_pool_max": ("pool_max", "The pool's max_size."),
    "chat_db_pool_connections_opened": (
        "connections_num",
        "Connections the pool opened since it started.",
    ),
}


class DatabasePoolCollector(Collector):
    """The database pool's numbers, read from psycopg's pool when /metrics is scraped.

    Read at scrape time, they can never drift from what the pool itself reports, and the turn
    code needs no bookkeeping for them.
    """

    def __init__(self, alias: str = DEFAULT_DB_ALIAS) -> None:
        self.alias = alias

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at import time.
        return [family for family, _ in self._families()]

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        families = self._families()
        if stats is None:
            return []  # SQLite, or DB_POOL=false: there is no pool to report
        for family, key in families:
            family.add_metric([], float(stats.get(key, 0)))
        return [family for family, _ in families]

    def _families(self) -> list[tuple[GaugeMetricFamily | CounterMetricFamily, str]]:
        return [
            (
                CounterMetricFamily(name, text)
                if name.endswith("_opened")
                else GaugeMetricFamily(name, text),
                key,
            )
            for name, (key, text) in _POOL_STATS.items()
        ]

    def _stats(self) -> dict[str, int] | None:
        wrapper = connections[self.alias]
        if wrapper.vendor != "postgresql":
            return None
        # The pool object is shared by every thread's connection wrapper; reading its
        # stats neither opens it nor takes a connection.
        pool = getattr(wrapper, "pool", None)
        return dict(pool.get_stats()) if pool is not None else None


REGISTRY.register(DatabasePoolCollector())
