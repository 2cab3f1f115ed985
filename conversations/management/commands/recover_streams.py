from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from conversations.maintenance import MaintenanceError, parse_age
from conversations.replies.recovery import (
    UNANSWERED_AGE,
    Recovered,
    close_unanswered,
    recover_orphans,
)


class Command(BaseCommand):
    help = (
        "Save replies left in the Redis reply log: those whose worker died (as interrupted) "
        "and those whose save failed while the database was away. Then give each user "
        "message that never got a reply (its turn was cut off before the reply started) an "
        "empty interrupted reply."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be saved; change nothing."
        )
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help=(
                "Close only unanswered messages older than this (e.g. 10m, 2h; default 10m). "
                "Without REDIS_URL a reply still streaming in a server cannot be seen, so this "
                "is required then: make it longer than any reply takes."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run: bool = options["dry_run"]
        if not settings.REDIS_URL and options["older_than"] is None:
            raise CommandError(
                "REDIS_URL is not set: there is no reply log, and replies streaming in a server "
                "cannot be seen. To close unanswered messages, pass --older-than longer than "
                "any reply takes (e.g. --older-than 1h)."
            )
        try:
            older_than = (
                parse_age(options["older_than"]) if options["older_than"] else UNANSWERED_AGE
            )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from None
        try:
            results = asyncio.run(self._recover(dry_run=dry_run, older_than=older_than))
        except DatabaseError as exc:
            raise CommandError(f"recover_streams: cannot read the database: {exc}") from None
        for item in results:
            self.stdout.write(
                f"{item.outcome:>20}  reply {item.message_id}  conversation "
                f"{item.conversation_id}  {item.status}, {item.chars} chars"
            )
        failed = sum(1 for item in results if item.outcome == "failed")
        verb = "would recover" if dry_run else "recovered"
        self.stdout.write(f"recover_streams: {verb} {len(results) - failed}, failed {failed}")
        if failed:
            raise CommandError(f"{failed} repl(ies) could not be saved yet; run again later.")

    async def _recover(self, *, dry_run: bool, older_than: timedelta) -> list[Recovered]:
        # Reply-log replies first: a save that succeeds now is no unanswered message.
        results = await recover_orphans(dry_run=dry_run) if settings.REDIS_URL else []
        return results + await close_unanswered(older_than=older_than, dry_run=dry_run)
