from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from personas.services import SEED_FILE, personas_seed


class Command(BaseCommand):
    help = "Create the shipped personas that do not exist yet (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", type=Path, default=SEED_FILE, help="JSON list of personas.")

    def handle(self, *args: Any, **options: Any) -> None:
        created, skipped = personas_seed(path=options["file"])
        self.stdout.write(f"seed_personas: {created} created, {skipped} already present")
