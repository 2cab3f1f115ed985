from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from conversations.export import conversations_export, replaced_on_success
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
        export = functools.partial(
            conversations_export,
            export_format=options["format"],
            username=options["user"],
            chunk_size=options["chunk_size"],
            progress=progress if options["verbosity"] >= 1 else None,
        )
        try:
            count = self._to_file(export, output) if output else self._to_stdout(export)
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"export_conversations: cannot read the database: {exc}") from None
        finally:
            progress.close()
        # The summary goes to stderr when the export itself is on stdout.
        where = str(output) if output else "stdout"
        summary = f"export_conversations: {count} conversation(s) as {options['format']} to {where}"
        (self.stdout if output else self.stderr).write(summary)

    def _to_file(self, export: Callable[..., int], output: Path) -> int:
        try:
            with replaced_on_success(output) as out:
                return export(out=out)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None

    def _to_stdout(self, export: Callable[..., int]) -> int:
        out = cast(TextIO, self.stdout._out)
        try:
            count = export(out=out)
            out.flush()
        except BrokenPipeError:
            # The reader went away (`| head`). Python's own flush at exit would fail again
            # and print a traceback of its own, so what is left goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            raise CommandError(
                "export_conversations: stdout was closed before the export ended; it is incomplete."
            ) from None
        return count
