"""Sessions for the tests of each place that checks one: signing in, and the ways a session
stops signing its user in."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def signed_in(user: Any, backend: str = MODEL_BACKEND) -> str:
    """A new session of `user`'s, signed in through `backend`: its key."""
    client = Client()
    client.force_login(user, backend=backend)
    key = client.session.session_key
    assert key is not None
    return key


def end_by_deleting(user: Any, key: str) -> None:
    Session.objects.filter(session_key=key).delete()


def end_by_expiring(user: Any, key: str) -> None:
    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(1))


def end_by_a_new_password(user: Any, key: str) -> None:
    user.set_password("another-horse-battery")
    user.save()


def end_by_deactivating(user: Any, key: str) -> None:
    user.is_active = False
    user.save()


def end_by_a_forged_row(user: Any, key: str) -> None:
    data = Session.objects.get(session_key=key).session_data
    forged = data[:-1] + ("A" if data[-1] != "A" else "B")
    Session.objects.filter(session_key=key).update(session_data=forged)


def end_by_deleting_the_user(user: Any, key: str) -> None:
    user.delete()


# Every way above, for `pytest.mark.parametrize("end", ENDINGS)`.
ENDINGS = [
    end_by_deleting,
    end_by_expiring,
    end_by_a_new_password,
    end_by_deactivating,
    end_by_deleting_the_user,
    end_by_a_forged_row,
]
