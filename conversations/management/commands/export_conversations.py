from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.export import conversations_export
from conversations.maintenance import MaintenanceError, ProgressBar


class Command(BaseCommand):
    help = (
        "Export conversations as JSON lines (one conversation per line, with every message "
        "of its tree, each with its parent_id, and the active path's current_leaf_id) or as "
        "Markdown (the active path), streamed so memory stays flat however many there are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", metavar="USERNAME", help="Only this user's conversations.")
        parser.add_argument(
            "--format", choices=["jsonl", "md"], default="jsonl", help="Default: jsonl."
        )
        parser.add_argument(
            "--output", "-o", type=Path, metavar="FILE", help="Write here instead of stdout."
        )
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=200,
            help="Conversations read from the database at a time (default 200).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1.")
        output: Path | None = options["output"]
        progress = ProgressBar(cast(TextIO, self.stderr._out), "conversations exported")
        show = options["verbosity"] >= 1
        try:
            # newline="": the export's own "\n" line ends are kept on every platform.
            with (
                output.open("w", encoding="utf-8", newline="")
                if output
                else contextlib.nullcontext(cast(TextIO, self.stdout._out)) as out
            ):
                count = conversations_export(
                    out=out,
                    export_format=options["format"],
                    username=options["user"],
                    chunk_size=options["chunk_size"],
                    progress=progress if show else None,
                )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        # The summary goes to stderr when the export itself is on stdout.
        where = str(output) if output else "stdout"
        summary = f"export_conversations: {count} conversation(s) as {options['format']} to {where}"
        (self.stdout if output else self.stderr).write(summary)
