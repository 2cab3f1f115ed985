"""Token usage for operators: per user, per persona, per day over a period, and its top users.

Read from the same per-day counters the budget check sums (conversations.models.TokenUsage),
so the report and the budget never disagree. The admin page and `manage.py usage_report`
both print what `usage_report` returns.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol, cast

from django.db.models import Sum
from django.utils import timezone

from accounts.services import Period, period_bounds
from conversations.models import TokenUsage

PERIODS: tuple[Period, ...] = ("day", "week", "month")
CSV_HEADER = ("day", "user", "persona", "tokens")


class Writable(Protocol):
    def write(self, text: str, /) -> object: ...


@dataclass(frozen=True)
class UsageRow:
    day: date
    user_id: int
    username: str
    persona: str  # slug
    tokens: int


@dataclass(frozen=True)
class UserTotal:
    user_id: int
    username: str
    tokens: int


@dataclass(frozen=True)
class UsageReport:
    period: Period
    start: datetime
    end: datetime
    rows: tuple[UsageRow, ...]  # newest day first, then the user and the persona
    top_users: tuple[UserTotal, ...]  # most tokens first
    total: int


def usage_report(*, period: Period, now: datetime | None = None, top: int = 10) -> UsageReport:
    """The calendar period holding `now` (from 00:00 UTC, weeks on Monday): two grouped
    queries over the counters, one for the rows and one for the top users."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    start, end = period_bounds(period, now or timezone.now())
    counters = TokenUsage.objects.filter(day__gte=start.date(), day__lt=end.date())
    rows = tuple(
        UsageRow(
            day=row["day"],
            user_id=row["user_id"],
            username=row["user__username"],
            persona=row["persona__slug"],
            tokens=int(row["tokens"]),
        )
        for row in counters.values("day", "user_id", "user__username", "persona__slug")
        .annotate(tokens=Sum("tokens"))
        .order_by("-day", "user__username", "persona__slug")
    )
    top_users = tuple(
        UserTotal(user_id=row["user_id"], username=row["user__username"], tokens=int(row["tokens"]))
        for row in counters.values("user_id", "user__username")
        .annotate(tokens=Sum("tokens"))
        .order_by("-tokens", "user__username")[:top]
    )
    return UsageReport(
        period=period,
        start=start,
        end=end,
        rows=rows,
        top_users=top_users,
        total=sum(row.tokens for row in rows),
    )


def usage_report_csv(report: UsageReport, out: Writable) -> None:
    """The report's rows as CSV: day, user, persona, tokens."""
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for row in report.rows:
        # A username is the user's to choose: one starting with = + - @ would run as a
        # formula when an operator opens the file in a spreadsheet.
        writer.writerow([row.day.isoformat(), _cell(row.username), row.persona, row.tokens])


def _cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def usage_report_text(report: UsageReport) -> str:
    """The report as the management command prints it."""
    lines = [
        f"Token usage this {report.period}: {report.start:%Y-%m-%d %H:%M} UTC to "
        f"{report.end:%Y-%m-%d %H:%M} UTC, {report.total} tokens",
        "",
        "Top users:",
    ]
    lines += [f"  {user.username:<30} {user.tokens:>12}" for user in report.top_users] or [
        "  (none)"
    ]
    lines += ["", f"  {'day':<10}  {'user':<30}  {'persona':<30}  {'tokens':>12}"]
    lines += [
        f"  {row.day.isoformat():<10}  {row.username:<30}  {row.persona:<30}  {row.tokens:>12}"
        for row in report.rows
    ] or ["  (no usage)"]
    return "\n".join(lines) + "\n"


def parse_period(value: str | None, default: str) -> Period:
    period = (value or default).strip().lower()
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    return cast(Period, period)
