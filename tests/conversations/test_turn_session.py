"""A socket's turn checks its session in the turn's own read, by Django's rules: the same
two statements as a turn of the HTTP API, and every session Django would refuse refused."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import services
from conversations.errors import SessionEnded
from conversations.models import Message
from tests.conversations.session_ends import ENDINGS, signed_in

pytestmark = pytest.mark.django_db


def begin(user: Any, session_key: str, content: str = "Hello") -> services.TurnContext:
    return services.turn_begin(
        user_id=user.id,
        conversation_id=None,
        persona_slug=None,
        content=content,
        client_id=uuid.uuid4(),
        history_limit=50,
        session_key=session_key,
    )


def work_statements(user: Any, session_key: str) -> list[str]:
    with CaptureQueriesContext(connection) as begun:
        begin(user, session_key)
    return [q["sql"] for q in begun.captured_queries if "SAVEPOINT" not in q["sql"]]


@pytest.mark.parametrize(
    "backend",
    [
        "django.contrib.auth.backends.ModelBackend",
        "axes.backends.AxesBackend",
        "accounts.oidc.backend.OIDCBackend",
    ],
)
def test_a_sockets_turn_reads_its_session_in_the_turns_one_read(alice, persona, backend):
    """Before: Django's session load and user load, two statements more per turn."""
    work = work_statements(alice, signed_in(alice, backend))
    assert len(work) == 2, work


def refused(user: Any, session_key: str) -> bool:
    try:
        begin(user, session_key, content="Am I still signed in?")
    except SessionEnded:
        return True
    return False


def test_a_session_that_ended_is_refused(alice, persona):
    key = signed_in(alice)
    Session.objects.filter(session_key=key).delete()
    assert refused(alice, key)
    assert not Message.objects.exists()


def test_an_expired_session_is_refused(alice, persona):
    key = signed_in(alice)
    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(1))
    assert refused(alice, key)


def test_a_session_after_a_password_change_is_refused(alice, persona):
    key = signed_in(alice)
    alice.set_password("another-horse-battery")
    alice.save()
    assert refused(alice, key)
    assert not Message.objects.exists()


def test_another_users_session_is_refused(alice, bob, persona):
    assert refused(alice, signed_in(bob))


def test_a_deactivated_users_session_is_refused(alice, persona):
    key = signed_in(alice)
    alice.is_active = False
    alice.save()
    assert refused(alice, key)


def test_a_session_of_a_backend_no_longer_configured_is_refused(alice, persona, settings):
    key = signed_in(alice, "accounts.oidc.backend.OIDCBackend")
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
    assert refused(alice, key)


def test_a_session_signed_before_a_key_rotation_is_refused_as_the_handshake_refuses_it(
    alice, persona, settings
):
    """Its data still decodes (SECRET_KEY_FALLBACKS), but its hash is not the current one:
    Channels' get_user, which the handshake uses, refuses it, so the turn must too."""
    settings.SECRET_KEY = "the-old-key-" + "x" * 50
    key = signed_in(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the-new-key-" + "y" * 50
    assert services.session_user_id(session_key=key) is None
    assert refused(alice, key)


def test_a_tampered_session_is_refused(alice, bob, persona):
    key = signed_in(bob)
    data = Session.objects.get(session_key=key).session_data
    # Bob's session row, claiming to be Alice's: the signature no longer matches.
    forged = data[:-1] + ("A" if data[-1] != "A" else "B")
    Session.objects.filter(session_key=key).update(session_data=forged)
    assert refused(alice, key)
    assert refused(bob, key)


@pytest.mark.parametrize("end", ENDINGS)
def test_a_session_accepted_before_is_refused_once_it_ends(alice, persona, end):
    """A socket's later turns skip the checks the first one passed (services._signed_in);
    whatever ended the session since, the next turn is refused all the same. A new password
    and a forged row reach the memo with a row it has not seen; a session gone or expired, or
    of a user inactive or deleted, reads as no row at all."""
    key = signed_in(alice)
    assert not refused(alice, key)
    assert not refused(alice, key)  # accepted again, now without decoding the session
    end(alice, key)
    assert refused(alice, key)


def test_a_session_accepted_for_one_user_is_refused_to_another(alice, bob, persona):
    key = signed_in(alice)
    assert not refused(alice, key)
    assert not refused(alice, key)
    assert refused(bob, key)
