"""Services behind the maintenance commands: pruning, exporting, and the database report.

Unlike the chat's turn code, these run in a command's own process, so they may use the ORM
freely; each delete batch is still its own short transaction.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TextIO

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from conversations.models import Conversation, Message
from conversations.serializers import conversation_export_dict, conversation_markdown

Progress = Callable[[int, int], None]  # (done, total)


class MaintenanceError(Exception):
    """A request the command cannot carry out (unknown user, bad duration, no PostgreSQL)."""


class ProgressBar:
    """A bar on stderr, redrawn per batch: `[#####-----] 500/1000 label`.

    On a terminal it redraws one line; into a log file it writes one line per update, so cron
    output stays readable.
    """

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.tty = stream.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width if total <= 0 else min(self.width, self.width * done // total)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"[{bar}] {done}/{total} {self.label}"
        self.stream.write(f"\r{text}" if self.tty else f"{text}\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --- durations ----------------------------------------------------------------------------

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """'90d', '12h', '2w', '30m', '45s'; a bare number means days."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise MaintenanceError(f"Cannot read {text!r} as an age: use e.g. 90d, 12h, 2w.")
    amount, unit = int(match[1]), match[2] or "d"
    if amount <= 0:
        raise MaintenanceError("The age must be more than zero.")
    return timedelta(**{_UNITS[unit]: amount})


def _owner_filter(username: str | None) -> Q:
    if username is None:
        return Q()
    User = get_user_model()
    if not User.objects.filter(username=username).exists():
        raise MaintenanceError(f"No user {username!r}.")
    return Q(owner__username=username)


# --- prune --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    conversations: int
    messages: int
    dry_run: bool


def conversations_prune(
    *,
    older_than: timedelta,
    username: str | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> PruneResult:
    """Delete conversations (and their messages) untouched for longer than `older_than`.

    "Untouched" is `updated_at`, which every turn bumps, so a conversation in use is never old.
    """
    cutoff = timezone.now() - older_than
    old = Conversation.objects.filter(_owner_filter(username), updated_at__lt=cutoff)
    total = old.count()
    if dry_run:
        messages = Message.objects.filter(conversation__in=old).count()
        return PruneResult(conversations=total, messages=messages, dry_run=True)
    deleted_conversations = deleted_messages = 0
    while True:
        # One short transaction per batch: no long lock, no huge rollback, and a run that is
        # interrupted keeps what it already deleted.
        with transaction.atomic():
            ids = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            # The cutoff is checked again in the delete: a chat that came back to life after
            # the ids were read is kept.
            _, per_model = Conversation.objects.filter(pk__in=ids, updated_at__lt=cutoff).delete()
        deleted_conversations += per_model.get(Conversation._meta.label, 0)
        deleted_messages += per_model.get(Message._meta.label, 0)
        if progress is not None:
            progress(deleted_conversations, total)
        if len(ids) < batch_size:
            break
    return PruneResult(deleted_conversations, deleted_messages, dry_run=False)


# --- unanswered messages ------------------------------------------------------------------


@dataclass(frozen=True)
class Unanswered:
    user_message_id: uuid.UUID
    conversation_id: uuid.UUID
    created_at: datetime


def unanswered_messages(
    *, older_than: timedelta, after: Unanswered | None = None, limit: int = 500
) -> list[Unanswered]:
    """User messages saved over `older_than` ago that have no reply row, oldest first.

    A turn saves the user's message, then its reply once the stream ends; a message with
    neither a reply row nor a generation in flight had its turn cut off in between (a
    worker killed, a start cancelled). `after` pages on from the previous batch.
    """
    found = Message.objects.filter(
        role=Message.Role.USER, created_at__lt=timezone.now() - older_than, reply__isnull=True
    )
    if after is not None:
        found = found.filter(
            Q(created_at__gt=after.created_at)
            | Q(created_at=after.created_at, id__gt=after.user_message_id)
        )
    rows = found.order_by("created_at", "id").values_list("id", "conversation_id", "created_at")
    return [Unanswered(*row) for row in rows[:limit]]


@transaction.atomic
def unanswered_close(*, item: Unanswered, reply_id: uuid.UUID, error: str) -> bool:
    """Save an empty `interrupted` reply to `item`; False when its conversation is gone.

    Unlike a turn's save this leaves `updated_at` alone: a reply that never came is no
    activity, and must neither lift an old chat to the top of the list nor save it from
    pruning.
    """
    if not Conversation.objects.filter(id=item.conversation_id).exists():
        return False
    Message.objects.get_or_create(
        id=reply_id,
        defaults={
            "conversation_id": item.conversation_id,
            "reply_to_id": item.user_message_id,
            "role": Message.Role.ASSISTANT,
            "content": "",
            "status": Message.Status.INTERRUPTED,
            "error": error,
        },
    )
    return True


# --- export -------------------------------------------------------------------------------

ExportFormat = Literal["jsonl", "md"]


def _export_queryset(username: str | None) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(_owner_filter(username))
        .select_related("owner", "persona")
        .prefetch_related(Prefetch("messages", queryset=Message.objects.order_by("created_at")))
        .order_by("created_at", "id")
    )


def conversation_record(conversation: Conversation) -> dict[str, Any]:
    """One JSONL line: the API's export shape plus who owns it."""
    return {**conversation_export_dict(conversation), "owner": conversation.owner.get_username()}


def conversations_export(
    *,
    out: TextIO,
    export_format: ExportFormat,
    username: str | None = None,
    chunk_size: int = 200,
    progress: Progress | None = None,
) -> int:
    """Write conversations to `out` one at a time; returns how many were written.

    `iterator(chunk_size=...)` streams rows through a server-side cursor and prefetches each
    chunk's messages, so memory holds one chunk, not the whole database.
    """
    queryset = _export_queryset(username)
    total = queryset.count()
    written = 0
    for conversation in queryset.iterator(chunk_size=chunk_size):
        if export_format == "jsonl":
            out.write(json.dumps(conversation_record(conversation), ensure_ascii=False) + "\n")
        else:
            out.write(conversation_markdown(conversation))
            owner = conversation.owner.get_username()
            out.write(f"\nUser: {owner} · Conversation: {conversation.id}\n\n---\n\n")
        written += 1
        if progress is not None and (written % chunk_size == 0 or written == total):
            progress(written, total)
    return written


def export_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse a JSONL export back (for restores and tests)."""
    for line in lines:
        if line.strip():
            yield json.loads(line)


# --- db_report ----------------------------------------------------------------------------


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


def fetch_worker_pool(url: str, *, token: str = "", timeout: float = 3.0) -> dict[str, int]:
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
