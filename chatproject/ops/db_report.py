"""The database report behind `manage.py db_report`: PostgreSQL's connections, the pools."""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from conversations.maintenance import MaintenanceError


@dataclass(frozen=True)
class Thresholds:
    idle_in_transaction_seconds: float = 30.0
    transaction_seconds: float = 300.0
    backends_ratio: float = 0.8  # of max_connections


@dataclass(frozen=True)
class Backend:
    pid: int
    state: str
    application: str
    client: str
    transaction_seconds: float | None
    state_seconds: float | None
    query: str


@dataclass
class Report:
    database: str
    states: dict[str, int]
    backends_total: int  # client backends on the whole server
    max_connections: int
    longest: Backend | None
    idle_in_transaction: list[Backend]
    pools: dict[str, dict[str, int]]  # where -> psycopg_pool stats
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_ACTIVITY_SQL = """
SELECT pid, coalesce(state, 'unknown'), coalesce(application_name, ''),
       coalesce(host(client_addr), 'local'),
       extract(epoch FROM now() - xact_start)::float8,
       extract(epoch FROM now() - state_change)::float8,
       left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 120)
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""


def _read_activity() -> tuple[str, list[Backend], int, int]:
    with connection.cursor() as cursor:
        # pg_stat_activity is read once per transaction and then frozen; inside a caller's
        # transaction that would show a connection that has since moved on.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT current_database(), current_setting('max_connections')::int")
        database, max_connections = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        (backends_total,) = cursor.fetchone()
        cursor.execute(_ACTIVITY_SQL)
        backends = [Backend(*row) for row in cursor.fetchall()]
    return database, backends, int(backends_total), int(max_connections)


def pool_stats_from_metrics(text: str) -> dict[str, int]:
    """A worker's pool numbers, read back from its /metrics text."""
    names = {
        "chat_db_pool_size": "pool_size",
        "chat_db_pool_available": "pool_available",
        "chat_db_pool_waiting": "requests_waiting",
        "chat_db_pool_max": "pool_max",
        "chat_db_pool_connections_opened": "connections_num",
    }
    stats: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name.removesuffix("_total"))
            if key is not None:
                stats[key] = int(sample.value)
    return stats


def worker_url_check(url: str) -> None:
    """Refuse a --worker that is not a web address: urllib would read file:// and ftp:// too,
    and put what it read in the error (a line of /etc/passwd in a cron mail)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MaintenanceError(
            f"Cannot read a worker's metrics from {url!r}: give an http:// or https:// URL "
            "(e.g. http://127.0.0.1:8001/metrics)."
        )


def fetch_worker_pool(url: str, *, token: str = "", timeout: float = 3.0) -> dict[str, int]:
    """A worker's pool statistics from its /metrics (`url` passed `worker_url_check`)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return pool_stats_from_metrics(response.read().decode())


def pool_problems(where: str, stats: dict[str, int]) -> list[str]:
    problems = []
    if stats.get("requests_waiting", 0) > 0:
        problems.append(
            f"pool of {where}: {stats['requests_waiting']} request(s) waiting for a connection"
        )
    size, available, maximum = (
        stats.get("pool_size", 0),
        stats.get("pool_available", 0),
        stats.get("pool_max", 0),
    )
    if maximum and size >= maximum and available == 0:
        problems.append(f"pool of {where}: exhausted, all {maximum} connections checked out")
    return problems


def db_report(
    *,
    thresholds: Thresholds = Thresholds(),
    worker_urls: tuple[str, ...] = (),
    token: str = "",
    pools: dict[str, dict[str, int]] | None = None,
) -> Report:
    """What PostgreSQL and the pools say now, and what of it is wrong.

    `pools` adds pool stats read elsewhere (tests pass a pool they hold); `worker_urls` are
    workers' /metrics addresses, since each worker's pool lives in that worker's process.
    """
    for url in worker_urls:
        worker_url_check(url)  # before anything is read, as any other bad argument
    if connection.vendor != "postgresql":
        raise MaintenanceError("db_report needs PostgreSQL (DATABASE_URL=postgres://...).")
    database, backends, backends_total, max_connections = _read_activity()
    states: dict[str, int] = {}
    for backend in backends:
        states[backend.state] = states.get(backend.state, 0) + 1
    in_transaction = [b for b in backends if b.transaction_seconds is not None]
    longest = max(in_transaction, key=lambda b: b.transaction_seconds or 0.0, default=None)
    idle = sorted(
        (b for b in backends if b.state.startswith("idle in transaction")),
        key=lambda b: -(b.state_seconds or 0.0),
    )
    all_pools = dict(pools or {})
    problems: list[str] = []
    for url in worker_urls:
        try:
            all_pools[url] = fetch_worker_pool(url, token=token)
        except OSError as exc:
            problems.append(f"worker {url}: metrics unreadable ({exc})")
    for where, stats in all_pools.items():
        problems += pool_problems(where, stats)
    for backend in idle:
        if (backend.state_seconds or 0.0) >= thresholds.idle_in_transaction_seconds:
            problems.append(
                f"pid {backend.pid} ({backend.application or backend.client}) has been idle in "
                f"transaction for {backend.state_seconds:.1f}s: {backend.query!r}"
            )
    if longest is not None and (longest.transaction_seconds or 0.0) >= (
        thresholds.transaction_seconds
    ):
        problems.append(
            f"pid {longest.pid} has held a transaction open for {longest.transaction_seconds:.1f}s"
        )
    if backends_total >= thresholds.backends_ratio * max_connections:
        problems.append(
            f"{backends_total} client connections on the server, "
            f"{backends_total / max_connections:.0%} of max_connections={max_connections}"
        )
    return Report(
        database=database,
        states=dict(sorted(states.items())),
        backends_total=backends_total,
        max_connections=max_connections,
        longest=longest,
        idle_in_transaction=idle,
        pools=all_pools,
        problems=problems,
    )


def report_lines(report: Report) -> list[str]:
    """The report as text, one finding per line; the command prints these."""
    states = ", ".join(f"{n} {state}" for state, n in report.states.items()) or "none"
    lines = [
        f"database {report.database}: {sum(report.states.values())} other connection(s): {states}",
        f"server: {report.backends_total} client connections of max_connections="
        f"{report.max_connections}",
    ]
    if report.longest is not None:
        longest = report.longest
        lines.append(
            f"longest open transaction: pid {longest.pid}, {longest.transaction_seconds:.1f}s, "
            f"{longest.state}, {longest.application or longest.client}: {longest.query!r}"
        )
    else:
        lines.append("longest open transaction: none open")
    lines.append(f"idle in transaction: {len(report.idle_in_transaction)}")
    for backend in report.idle_in_transaction:
        lines.append(
            f"  pid {backend.pid} for {backend.state_seconds or 0.0:.1f}s "
            f"({backend.application or backend.client}): {backend.query!r}"
        )
    if not report.pools:
        lines.append("pools: none read (pass --worker URL for each worker's /metrics)")
    for where, stats in report.pools.items():
        lines.append(
            f"pool {where}: size {stats.get('pool_size', 0)}/{stats.get('pool_max', 0)}, "
            f"available {stats.get('pool_available', 0)}, "
            f"waiting {stats.get('requests_waiting', 0)}, "
            f"opened {stats.get('connections_num', 0)}"
        )
    for problem in report.problems:
        lines.append(f"PROBLEM: {problem}")
    return lines
