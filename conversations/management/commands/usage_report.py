"""manage.py usage_report: tokens per user, per persona, per day this period, and the top users."""

from __future__ import annotations

from typing import Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accounts.services import Period
from conversations.reports import PERIODS, usage_report, usage_report_csv, usage_report_text

# More top users than a screen holds is the CSV's job; the bound keeps the query's LIMIT in
# PostgreSQL's bigint.
MAX_TOP = 10_000


class Command(BaseCommand):
    help = (
        "Print this period's token usage (from 00:00 UTC; weeks start on Monday) per user, "
        "per persona and per day, with the top users; --csv prints the rows as CSV."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", choices=PERIODS, default="day")
        parser.add_argument("--csv", action="store_true", help="day,user,persona,tokens rows")
        parser.add_argument(
            "--top", type=int, default=10, help=f"how many top users to list (1 to {MAX_TOP})"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["top"] <= MAX_TOP:
            raise CommandError(f"--top must be between 1 and {MAX_TOP}.")
        try:
            report = usage_report(period=cast(Period, options["period"]), top=options["top"])
        except DatabaseError as exc:
            raise CommandError(f"usage_report: cannot read the database: {exc}") from None
        if options["csv"]:
            usage_report_csv(report, self.stdout)
        else:
            self.stdout.write(usage_report_text(report), ending="")
