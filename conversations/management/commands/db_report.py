from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from attachments.limits import size_text
from attachments.pruning import DEFAULT_GRACE, uploads_summary
from chatproject.ops.db_report import Thresholds, db_report, report_lines
from conversations.maintenance import MaintenanceError


class Command(BaseCommand):
    help = (
        "Report PostgreSQL connections by state, the longest open transaction, any idle in "
        "transaction, and the workers' pool statistics. Exits 1 when something is wrong "
        "(for cron and monitors), 2 when the database cannot be read. Also the uploads' "
        "count and size, and those no message has used for a day."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = Thresholds()
        parser.add_argument(
            "--worker",
            action="append",
            default=[],
            metavar="URL",
            help="A worker's /metrics URL to read its pool from; repeat for each worker.",
        )
        parser.add_argument(
            "--max-idle-in-transaction",
            type=float,
            default=defaults.idle_in_transaction_seconds,
            metavar="SECONDS",
            help="Flag a connection idle in transaction this long (default %(default)s).",
        )
        parser.add_argument(
            "--max-transaction-age",
            type=float,
            default=defaults.transaction_seconds,
            metavar="SECONDS",
            help="Flag a transaction open this long (default %(default)s).",
        )
        parser.add_argument(
            "--max-connections-ratio",
            type=float,
            default=defaults.backends_ratio,
            metavar="RATIO",
            help="Flag when the server's connections reach this share of max_connections "
            "(default %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        thresholds = thresholds_from(options)
        try:
            report = db_report(
                thresholds=thresholds,
                worker_urls=tuple(options["worker"]),
                token=settings.METRICS_TOKEN,
            )
            uploads = uploads_summary(grace=DEFAULT_GRACE)
        except MaintenanceError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except DatabaseError as exc:
            raise CommandError(
                f"db_report: cannot read the database: {exc}", returncode=2
            ) from None
        for line in report_lines(report):
            self.stdout.write(line)
        # Not a problem to flag: prune_conversations removes the unused ones.
        self.stdout.write(
            f"uploads: {uploads.uploads} file(s), {size_text(uploads.upload_bytes)}; "
            f"{uploads.unused} unused for over a day ({size_text(uploads.unused_bytes)}), "
            "which prune_conversations removes"
        )
        if report.ok:
            self.stdout.write(
                f"db_report: OK, {sum(report.states.values())} connection(s), "
                f"{len(report.idle_in_transaction)} idle in transaction"
            )
            return
        raise CommandError(f"db_report: {len(report.problems)} problem(s) found", returncode=1)


def thresholds_from(options: dict[str, Any]) -> Thresholds:
    """The thresholds given, refused where they could never flag (a ratio over 1, nan, inf)
    or would flag everything (zero or less): a monitor must not pass or fail for nothing."""
    for option in ("max_idle_in_transaction", "max_transaction_age"):
        if not 0 < options[option] < math.inf:
            name = "--" + option.replace("_", "-")
            raise CommandError(f"{name} must be a number of seconds above 0.", returncode=2)
    if not 0 < options["max_connections_ratio"] <= 1:
        raise CommandError(
            "--max-connections-ratio must be above 0 and at most 1 (a share of max_connections).",
            returncode=2,
        )
    return Thresholds(
        idle_in_transaction_seconds=options["max_idle_in_transaction"],
        transaction_seconds=options["max_transaction_age"],
        backends_ratio=options["max_connections_ratio"],
    )
