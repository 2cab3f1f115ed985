from __future__ import annotations

from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from attachments.limits import size_text
from attachments.pruning import UploadsPruneResult, uploads_prune
from conversations.maintenance import MaintenanceError, ProgressBar, owner_filter, parse_age
from conversations.models import Conversation
from conversations.pruning import conversations_prune


class Command(BaseCommand):
    help = (
        "Delete conversations (with every message of their trees, all versions) not updated "
        "for longer than --older-than, in batches; then the uploads no message uses any more "
        "and the stored files no upload names, once past their grace period (a day unless "
        "set). Try --dry-run first."
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
        parser.add_argument(
            "--upload-grace",
            default="24h",
            metavar="AGE",
            help="An upload no message uses, or a stored file no upload names, goes only once "
            "it is older than this, so a file being attached now stays (default 24h).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        progress = ProgressBar(cast(TextIO, self.stderr._out), "conversations deleted")
        files_progress = ProgressBar(cast(TextIO, self.stderr._out), "unused uploads deleted")
        shown = options["verbosity"] >= 1
        try:
            older_than = parse_age(options["older_than"])
            grace = parse_age(options["upload_grace"])
            # What conversations_prune deletes; a dry run counts their files as going too.
            going = Conversation.objects.filter(
                owner_filter(options["user"]), updated_at__lt=timezone.now() - older_than
            )
            try:
                result = conversations_prune(
                    older_than=older_than,
                    username=options["user"],
                    dry_run=options["dry_run"],
                    batch_size=options["batch_size"],
                    progress=progress if shown else None,
                )
            finally:
                progress.close()
            try:
                files = uploads_prune(
                    grace=grace,
                    username=options["user"],
                    dry_run=options["dry_run"],
                    going=going,
                    batch_size=options["batch_size"],
                    progress=files_progress if shown else None,
                )
            finally:
                files_progress.close()
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            # Batches already deleted stay deleted; a rerun goes on from there.
            raise CommandError(f"prune_conversations: cannot read the database: {exc}") from None
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
        self.stdout.write(files_line(files, options["user"], options["upload_grace"]))


def files_line(files: UploadsPruneResult, username: str | None, grace: str) -> str:
    done = "dry run, would delete" if files.dry_run else "deleted"
    scope = f" of {username}" if username else ""
    line = (
        f"prune_conversations: {done} {files.uploads} unused upload(s){scope} "
        f"({size_text(files.upload_bytes)})"
    )
    if files.objects is None:
        return f"{line} older than {grace}; stored files no upload names: only without --user"
    return (
        f"{line} and {files.objects} stored file(s) no upload names "
        f"({size_text(files.object_bytes)}), older than {grace}"
    )
