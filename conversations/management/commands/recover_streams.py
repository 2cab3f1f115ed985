from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.recovery import Recovered, recover_orphans


class Command(BaseCommand):
    help = (
        "Save replies left in the Redis reply log: those whose worker died (as interrupted) "
        "and those whose save failed while the database was away."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be saved; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: without Redis there is no reply log.")
        results: list[Recovered] = asyncio.run(recover_orphans(dry_run=options["dry_run"]))
        for item in results:
            self.stdout.write(
                f"{item.outcome:>20}  reply {item.message_id}  conversation "
                f"{item.conversation_id}  {item.status}, {item.chars} chars"
            )
        failed = sum(1 for item in results if item.outcome == "failed")
        verb = "would recover" if options["dry_run"] else "recovered"
        self.stdout.write(f"recover_streams: {verb} {len(results) - failed}, failed {failed}")
        if failed:
            raise CommandError(f"{failed} repl(ies) could not be saved yet; run again later.")
