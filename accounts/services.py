from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import BigIntegerField, Case, Field, Q, Sum, Value, When
from django.db.models.functions import Coalesce, Length

from accounts.models import Profile
from conversations.models import Message

Period = Literal["day", "week", "month"]


@transaction.atomic
def demo_user_ensure(
    *, username: str, password: str, display_name: str
) -> Literal["created", "same password", "other password"]:
    """Create the local demo account if it is missing, and say what was found.

    An existing account keeps its password ("other password" when it is not the one given):
    running the command again must not reset a password behind its owner's back. A username
    the sign-up form would refuse, or an empty password, is a ValidationError by field.
    """
    User = get_user_model()
    try:
        cast("Field[str, str]", User._meta.get_field(User.USERNAME_FIELD)).clean(username, None)
    except ValidationError as exc:
        raise ValidationError({"username": exc.messages}) from None
    if not password:
        raise ValidationError({"password": ["The demo account needs a password."]})
    existing = User.objects.filter(username=username).first()
    if existing is not None:
        return "same password" if existing.check_password(password) else "other password"
    user = User.objects.create_user(username=username, password=password)
    Profile.objects.update_or_create(
        user=user,
        defaults={"display_name": display_name, "about": "Trying out the demo on my own machine."},
    )
    return "created"


# --- token usage ------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonaUsage:
    slug: str
    name: str
    tokens: int


@dataclass(frozen=True)
class Usage:
    tokens: int
    by_persona: tuple[PersonaUsage, ...]  # most tokens first


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """The calendar period holding `now`: [start, next start), from 00:00 UTC, weeks on Monday."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return today, today + timedelta(days=1)
    if period == "week":
        start = today - timedelta(days=today.weekday())
        return start, start + timedelta(weeks=1)
    if period == "month":
        start = today.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def duration_text(seconds: float) -> str:
    """Like "5 h 12 min", "2 d 3 h" or "4 min": how long until the budget renews."""
    minutes = max(1, int(seconds + 59) // 60)
    days, hours, mins = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


# A reply's tokens: what the provider reported, or, where it reported nothing, an estimate of
# ceil(characters / 4). Integer division of (n + 3) by 4 is that ceiling in SQL.
_TOKENS = Case(
    When(
        Q(input_tokens__isnull=True) & Q(output_tokens__isnull=True),
        then=(Length("content") + 3) / 4,
    ),
    default=Coalesce("input_tokens", Value(0)) + Coalesce("output_tokens", Value(0)),
    output_field=BigIntegerField(),
)


def usage_for(*, user_id: int, since: datetime, until: datetime | None = None) -> Usage:
    """Tokens of the user's replies created in [since, until), in total and per persona.

    One grouped query; the total is the sum of the groups, so the two always agree.
    """
    replies = Message.objects.filter(
        conversation__owner_id=user_id, role=Message.Role.ASSISTANT, created_at__gte=since
    )
    if until is not None:
        replies = replies.filter(created_at__lt=until)
    rows = (
        replies.values("conversation__persona__slug", "conversation__persona__name")
        .annotate(tokens=Sum(_TOKENS))
        .order_by("-tokens", "conversation__persona__name")
    )
    by_persona = tuple(
        PersonaUsage(
            slug=cast(str, row["conversation__persona__slug"]),
            name=cast(str, row["conversation__persona__name"]),
            tokens=int(row["tokens"] or 0),
        )
        for row in rows
    )
    return Usage(tokens=sum(p.tokens for p in by_persona), by_persona=by_persona)
