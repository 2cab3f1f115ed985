"""What the maintenance commands share: their one error, the progress bar, ages, the owner filter.

The work itself is in `conversations.pruning`, `conversations.export` and
`chatproject.ops.db_report`; each runs in a command's own process, so it may use the ORM freely.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import TextIO

from django.contrib.auth import get_user_model
from django.db.models import Q

Progress = Callable[[int, int], None]  # (done, total)


class MaintenanceError(Exception):
    """A request the command cannot carry out (unknown user, bad duration, no PostgreSQL)."""


class ProgressBar:
    """A bar on stderr, redrawn per batch: `[#####-----] 500/1000 label`.

    On a terminal it redraws one line; into a log file it writes one line per update, so cron
    output stays readable.
    """

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.tty = stream.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width if total <= 0 else min(self.width, self.width * done // total)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"[{bar}] {done}/{total} {self.label}"
        self.stream.write(f"\r{text}" if self.tty else f"{text}\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Ages are subtracted from now: beyond a century nothing is older, and far beyond it the date
# itself overflows (year 1 is as far back as a datetime goes).
MAX_AGE = timedelta(days=36525)


def parse_age(text: str) -> timedelta:
    """'90d', '12h', '2w', '30m', '45s'; a bare number means days."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise MaintenanceError(f"Cannot read {text!r} as an age: use e.g. 90d, 12h, 2w.")
    amount, unit = int(match[1]), match[2] or "d"
    if amount <= 0:
        raise MaintenanceError("The age must be more than zero.")
    try:
        age = timedelta(**{_UNITS[unit]: amount})
    except OverflowError:
        age = timedelta.max
    if age > MAX_AGE:
        raise MaintenanceError(f"{text.strip()!r} is more than 100 years: give a shorter age.")
    return age


def owner_filter(username: str | None) -> Q:
    """All users' rows (None) or one user's; an unknown username is a MaintenanceError."""
    if username is None:
        return Q()
    User = get_user_model()
    if not User.objects.filter(username=username).exists():
        raise MaintenanceError(f"No user {username!r}.")
    return Q(owner__username=username)
