from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.db import transaction

from personas.models import Persona

SEED_FILE = Path(__file__).resolve().parent / "data" / "personas.json"


@transaction.atomic
def personas_seed(*, path: Path = SEED_FILE) -> tuple[int, int]:
    """Create the shipped personas that are missing. Existing ones are left as admins edited them.

    Returns (created, skipped).
    """
    entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    created = skipped = 0
    has_default = Persona.objects.filter(is_default=True).exists()
    for entry in entries:
        fields = dict(entry)
        slug = fields.pop("slug")
        if fields.get("is_default") and has_default:
            fields["is_default"] = False
        _, was_created = Persona.objects.get_or_create(slug=slug, defaults=fields)
        if was_created:
            created += 1
            has_default = has_default or bool(fields.get("is_default"))
        else:
            skipped += 1
    return created, skipped
