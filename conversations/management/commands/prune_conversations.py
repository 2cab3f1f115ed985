from __future__ import annotations

from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.maintenance import MaintenanceError, ProgressBar, parse_age
from conversations.pruning import conversations_prune


class Command(BaseCommand):
    help = (
        "Delete conversations (with every message of their trees, all versions) not updated "
        "for longer than --older-than, in batches. Try --dry-run first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help="Last activity older than this: 90d, 12h, 2w, 30m (a bare number is days).",
        )
        parser.add_argument("--user", metavar="USERNAME", help="Only this user's conversations.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            help="Conversations deleted per transaction (default 500).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        progress = ProgressBar(cast(TextIO, self.stderr._out), "conversations deleted")
        try:
            result = conversations_prune(
                older_than=parse_age(options["older_than"]),
                username=options["user"],
                dry_run=options["dry_run"],
                batch_size=options["batch_size"],
                progress=progress if options["verbosity"] >= 1 else None,
            )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        scope = f" of {options['user']}" if options["user"] else ""
        if result.dry_run:
            self.stdout.write(
                f"prune_conversations: dry run, would delete {result.conversations} "
                f"conversation(s){scope} and {result.messages} message(s) older than "
                f"{options['older_than']}"
            )
        else:
            self.stdout.write(
                f"prune_conversations: deleted {result.conversations} conversation(s){scope} "
                f"and {result.messages} message(s) older than {options['older_than']}"
            )
