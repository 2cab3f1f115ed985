"""Sync ORM functions: the only place chat code touches the database.

Each function is one short transaction (or, where its one write is a single statement,
no more than that statement's own) and returns plain values. Async code calls them
through `conversations.db.db_call`, which gives the connection back to the pool before the
await returns.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import import_module
from typing import Any, cast

from channels.auth import get_user
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.base import SessionBase
from django.core.signals import setting_changed
from django.db import connection, transaction
from django.db.models import (
    Case,
    F,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import RawSQL
from django.dispatch import receiver
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.module_loading import import_string

from accounts.models import Profile
from accounts.services import Period, duration_text, period_bounds
from attachments.models import Attachment, Upload
from conversations import turn_sql
from conversations.context import (
    AttachmentInfo,
    HistoryItem,
    PersonaInfo,
    ProfileInfo,
    ReplyInfo,
    TurnContext,
)
from conversations.db import NeedsThread
from conversations.errors import Forbidden, Invalid, NotFound, QuotaExceeded, SessionEnded
from conversations.models import Conversation, Message, TokenUsage
from conversations.prompts import title_from_message
from personas.models import Persona


def _persona_info(persona: Persona) -> PersonaInfo:
    return PersonaInfo(
        slug=persona.slug,
        name=persona.name,
        description=persona.description,
        system_prompt=persona.system_prompt,
        avatar=persona.avatar,
        provider=persona.provider,
        model=persona.model,
        temperature=persona.temperature,
        accepts_images=persona.accepts_images,
    )


def _reply_info(message: Message) -> ReplyInfo:
    return ReplyInfo(
        message_id=message.id,
        content=message.content,
        status=message.status,
        error=message.error,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
    )


def persona_for_new_conversation(slug: str | None, user_id: int) -> Persona:
    """The persona named, or the default; only those the user may use exist for them."""
    personas = Persona.objects.usable_by(user_id)
    persona = (
        personas.filter(slug=slug).first()
        if slug is not None
        # The default first, else the first the user may use.
        else personas.order_by("-is_default", "order", "name").first()
    )
    if persona is None:
        raise _no_persona(slug)
    return persona


def _no_persona(slug: str | None) -> NotFound:
    """The refusal of a persona the user may not use, or that does not exist (the same: see
    PROTOCOL.md). The slug is named as far as a slug can be long, not echoed whole."""
    if slug is None:
        return NotFound("No persona is set up yet.")
    shown = slug if len(slug) <= PERSONA_SLUG_SHOWN else slug[:PERSONA_SLUG_SHOWN] + "…"
    return NotFound(f"No persona {shown!r}.")


PERSONA_SLUG_SHOWN = 60


def session_user_id(*, session_key: str | None) -> int | None:
    """The user a session signs in, checked as Django checks a request (the session exists,
    the user is active, the password has not changed since), or None."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user.func({"session": store})
    return int(user.pk) if user.is_authenticated else None


_DB_SESSIONS = "django.contrib.sessions.backends.db"
_ROW_SESSIONS = (_DB_SESSIONS, "django.contrib.sessions.backends.cached_db")
_SOCKETS_A_QUERY = 1000


def sessions_over(*, sockets: Collection[tuple[int, str]]) -> set[tuple[int, str]]:
    """Of these sockets' sessions (user id, session key), those that no longer sign in
    that user: deleted (an operator's script, `clearsessions`), expired, or their user's
    password changed, deactivated or deleted, by any process. With sessions kept as rows,
    two queries for up to a thousand sockets, and what `session_signs_in` saw before costs
    no decoding; any session it does not vouch for gets Django's full check
    (`session_user_id`), as does every session kept elsewhere (a cache, a cookie)."""
    over: set[tuple[int, str]] = set()
    pairs = list(sockets)
    if settings.SESSION_ENGINE not in _ROW_SESSIONS:
        return {
            (user_id, key) for user_id, key in pairs if session_user_id(session_key=key) != user_id
        }
    sessions = import_module(settings.SESSION_ENGINE).SessionStore.get_model_class().objects
    now = timezone.now()
    for start in range(0, len(pairs), _SOCKETS_A_QUERY):
        chunk = pairs[start : start + _SOCKETS_A_QUERY]
        data = dict(
            sessions.filter(
                session_key__in={key for _, key in chunk}, expire_date__gt=now
            ).values_list("session_key", "session_data")
        )
        passwords = dict(
            get_user_model()
            .objects.filter(pk__in={user_id for user_id, _ in chunk}, is_active=True)
            .values_list("pk", "password")
        )
        for user_id, key in chunk:
            if key not in data:
                over.add((user_id, key))  # gone or expired: nothing more to ask
                continue
            row = turn_sql.SessionRow(data[key], passwords.get(user_id))
            if (
                not session_signs_in(user_id, key, row)
                and session_user_id(session_key=key) != user_id
            ):
                over.add((user_id, key))
    return over


# The sessions `session_signs_in` accepted lately: a digest of the user, the session key, its
# data and the user's password hash, exactly as the turn read them (a digest, so no password
# hash outlives its turn in memory). The verdict depends on nothing else but settings, so a
# socket's later messages skip decoding the session and hashing (about a sixth of a turn's
# CPU on its database thread, micro-measured): any change to the row (a new password, a
# re-signed session) misses, and a session gone, expired or of an inactive user never gets
# here.
_signed_in: dict[bytes, bool] = {}
_signed_in_lock = threading.Lock()  # turns begin on several threads
_SIGNED_IN_KEPT = 4096


@receiver(setting_changed)
def _forget_sessions_signed_in(**kwargs: Any) -> None:
    """A test's changed setting (the backends, the key) may change a verdict: forget them."""
    with _signed_in_lock:
        _signed_in.clear()


def session_signs_in(user_id: int, session_key: str, row: turn_sql.SessionRow | None) -> bool:
    """Whether the session read with a turn (`turn_sql.SessionRow`) still signs in `user_id`,
    by the steps the handshake's `get_user` (Channels') takes to accept one: the session is
    there and unexpired, names this user and a configured backend that loads users as
    ModelBackend does, the user is active, and the password hash it holds is current. False
    only means "not shown here": the caller then asks `session_user_id`, the handshake's own
    check, which decides the rest (any other backend, a session gone)."""
    if settings.SESSION_ENGINE != _DB_SESSIONS or row is None:
        return False
    if row.data is None or row.password is None:
        return False
    seen = _signed_in_digest(user_id, session_key, row.data, row.password)
    if seen in _signed_in:
        return True
    session = import_module(_DB_SESSIONS).SessionStore(session_key).decode(row.data)
    if not _names_a_model_backend(session) or str(session.get(SESSION_KEY)) != str(user_id):
        return False
    if not _holds_current_hash(session, get_user_model()(pk=user_id, password=row.password)):
        return False
    _remember_signed_in(seen)
    return True


def _names_a_model_backend(session: dict[str, Any]) -> bool:
    """The decoded session names a configured backend that loads users as ModelBackend does."""
    backend_path = session.get(BACKEND_SESSION_KEY)
    return backend_path in settings.AUTHENTICATION_BACKENDS and _gets_users_as_model_backend(
        backend_path
    )


def _holds_current_hash(session: dict[str, Any], user: Any) -> bool:
    """The decoded session holds `user`'s current auth hash, as `get_user` verifies it."""
    signed_with = session.get(HASH_SESSION_KEY)
    return bool(signed_with and constant_time_compare(signed_with, user.get_session_auth_hash()))


def _signed_in_digest(user_id: int, session_key: str, data: str, password: str) -> bytes:
    return hashlib.blake2b(
        "\0".join((str(user_id), session_key, data, password)).encode(), digest_size=32
    ).digest()


def _remember_signed_in(seen: bytes) -> None:
    with _signed_in_lock:
        _signed_in[seen] = True
        if len(_signed_in) > _SIGNED_IN_KEPT:
            del _signed_in[next(iter(_signed_in))]  # the oldest (dicts keep their order)


def socket_user(*, session: SessionBase) -> Any:
    """The user a socket's session signs in, or AnonymousUser: Channels' `get_user`, on a
    thread (it may flush a session whose password hash is stale)."""
    return get_user.func({"session": session})


def socket_user_on_loop(session: SessionBase) -> bool:
    """Whether `socket_user_steps` can answer at all, asked before it takes a connection:
    a database-backed session named by the cookie, and users it reads as the ORM would. A
    handshake with no cookie needs no database, and one with a session in another store is
    Django's to load: both go straight to `socket_user`."""
    return (
        settings.SESSION_ENGINE == _DB_SESSIONS
        and bool(session.session_key)
        and turn_sql.users_read_plainly()
    )


def socket_user_steps(*, session: SessionBase) -> turn_sql.Steps[Any]:
    """`socket_user` as two statements for the event loop (`_signed_in_user`), where they
    can answer; else, nothing written, `socket_user` itself."""
    user = yield from _signed_in_user(session)
    if user is None:
        yield turn_sql.ORM
        return socket_user(session=session)
    return user


def _signed_in_user(session: SessionBase) -> turn_sql.Steps[Any]:
    """The user, read as the session row and then the user row, in the everyday case only:
    the database-backed session is there and unexpired, and names a configured backend that
    loads users as ModelBackend does, and a user who is active and whose password hash it
    holds. The store is then left as `get_user` leaves it (loaded: nothing reads it again),
    and the session remembered as signed in, for the socket's first turn. None for
    anything else (no cookie, a session gone, another backend, a user gone or inactive, a
    stale hash, which Channels answers by flushing the session): `get_user` decides."""
    key = session.session_key
    if not key or not socket_user_on_loop(session):
        return None
    data = yield from turn_sql.session_data(key, timezone.now())
    if data is None:
        return None
    decoded = session.decode(data)
    if SESSION_KEY not in decoded or not _names_a_model_backend(decoded):
        return None
    pk = get_user_model()._meta.pk
    assert pk is not None
    user = yield from turn_sql.user_by_pk(pk.to_python(decoded[SESSION_KEY]))
    if user is None or not ModelBackend().user_can_authenticate(user):
        return None
    if not _holds_current_hash(decoded, user):
        return None
    session._session_cache = decoded  # type: ignore[attr-defined]  # what load() leaves
    _remember_signed_in(_signed_in_digest(int(user.pk), key, data, user.password))
    return user


@functools.cache
def _gets_users_as_model_backend(backend_path: str) -> bool:
    backend = import_string(backend_path)
    return (
        backend.get_user is ModelBackend.get_user
        and backend.user_can_authenticate is ModelBackend.user_can_authenticate
    )


def _check_user(user_id: int, session_key: str | None) -> None:
    if session_key is not None:
        valid = session_user_id(session_key=session_key) == user_id
    else:  # the HTTP API: the request's session was checked moments ago
        valid = get_user_model().objects.filter(id=user_id, is_active=True).exists()
    if not valid:
        raise SessionEnded("Your session has ended; sign in again.")


def conversation_owned(*, user_id: int, conversation_id: uuid.UUID) -> bool:
    return Conversation.objects.filter(id=conversation_id, owner_id=user_id).exists()


def turn_begin(
    *,
    user_id: int,
    conversation_id: uuid.UUID | None,
    persona_slug: str | None,
    content: str,
    client_id: uuid.UUID,
    history_limit: int,
    parent_id: uuid.UUID | None = None,
    parent_given: bool = False,
    attachment_ids: tuple[uuid.UUID, ...] = (),
    check_persona: Callable[[PersonaInfo], object] | None = None,
    session_key: str | None = None,
) -> TurnContext:
    """Save the user's message (once per user and client_id) and read what the reply needs.

    The message continues the active path, or, with `parent_given`, follows the assistant
    message `parent_id` (None: a new first message), which is how an edit is resent.
    `check_persona` may refuse the turn (e.g. its provider is misconfigured) by raising;
    the transaction then rolls back and nothing is saved. `session_key` is the socket's
    session: a socket outlives logout until it hears of it, so the turn checks it here.
    """
    try:
        with _begin_transaction(conversation_id, attachment_ids):
            steps = turn_begin_steps(
                user_id=user_id,
                conversation_id=conversation_id,
                persona_slug=persona_slug,
                content=content,
                client_id=client_id,
                history_limit=history_limit,
                parent_id=parent_id,
                parent_given=parent_given,
                attachment_ids=attachment_ids,
                check_persona=check_persona,
                session_key=session_key,
            )
            return turn_sql.run(steps)
    except _SentMeanwhile:
        # A concurrent send of the same client_id (another socket, worker or the HTTP API)
        # committed first. Our write saved nothing: the conversation we would have made is
        # made only with its message (or our transaction rolled it back).
        with transaction.atomic():
            existing = Message.objects.get(
                owner_id=user_id, role=Message.Role.USER, client_id=client_id
            )
            return _duplicate(existing, conversation_id, history_limit)


class _SentMeanwhile(NeedsThread):
    """The write found this client_id's message saved: the begin is then a re-send's, whose
    reads take the ORM (on the event loop, a thread runs the whole begin again)."""


def _begin_transaction(
    conversation_id: uuid.UUID | None, attachment_ids: tuple[uuid.UUID, ...]
) -> AbstractContextManager[object]:
    """The turn's transaction, or none where a new conversation's turn writes once.

    On PostgreSQL a new conversation and its message are one statement, atomic on its own
    (`turn_sql.message_insert`), and nothing before it writes. BEGIN and COMMIT would add
    two round trips to the turn's two and hold no lock or snapshot the turn needs: under
    READ COMMITTED each statement sees the data as of its own start, in a transaction or
    not. Attachments are a second write, so a turn with any keeps its transaction. Inside
    a caller's transaction it takes a savepoint, so a failed write leaves that transaction
    usable."""
    if (
        conversation_id is None
        and not attachment_ids
        and turn_sql.on_postgresql()
        and not connection.in_atomic_block
    ):
        return nullcontext()
    return transaction.atomic()


def turn_begin_steps(
    *,
    user_id: int,
    conversation_id: uuid.UUID | None,
    persona_slug: str | None,
    content: str,
    client_id: uuid.UUID,
    history_limit: int,
    parent_id: uuid.UUID | None,
    parent_given: bool,
    attachment_ids: tuple[uuid.UUID, ...],
    check_persona: Callable[[PersonaInfo], object] | None,
    session_key: str | None,
) -> turn_sql.Steps[TurnContext]:
    """The turn's reads and write, in as few round trips as its rules allow. On PostgreSQL:
    one read of all it needs (the socket's session, and an existing conversation locked,
    with it), and one write (with an existing conversation's history). SQLite locks, writes
    and reads the history apart. The caller holds the transaction (`_begin_transaction`)
    and runs the steps: `turn_sql.run` on a thread, `db.loop_run` on the event loop. The
    rare paths (a re-send, an edit, attachments, a session Django must check in full) say
    first that they take the ORM (`turn_sql.ORM`), before anything is written."""
    if session_key is not None and settings.SESSION_ENGINE != _DB_SESSIONS:
        yield turn_sql.ORM  # the socket's session is Django's own store's to check
    now = timezone.now()
    start, resets = period_bounds(cast(Period, settings.TOKEN_BUDGET_PERIOD), now)
    # PostgreSQL locks an existing conversation in the same read (a lateral subquery).
    one_read = turn_sql.on_postgresql()
    reads = yield from turn_sql.turn_reads(
        user_id=user_id,
        client_id=client_id,
        budget_start=start.date(),
        new=conversation_id is None,
        persona_slug=persona_slug,
        session_key=session_key if settings.SESSION_ENGINE == _DB_SESSIONS else None,
        now=now,
        lock_conversation=conversation_id if one_read else None,
    )
    if session_key is not None and not session_signs_in(user_id, session_key, reads.session):
        yield turn_sql.ORM
        _check_user(user_id, session_key)
    if not reads.active:
        raise SessionEnded("Your session has ended; sign in again.")
    if reads.existing is not None:
        yield turn_sql.ORM
        return _duplicate(Message.objects.get(id=reads.existing), conversation_id, history_limit)

    parent: uuid.UUID | None = None
    if conversation_id is None:
        if parent_given and parent_id is not None:
            raise NotFound("No such message in this conversation.")
        if reads.persona is None or reads.persona_id is None:
            raise _no_persona(persona_slug)
        persona, persona_id, title = reads.persona, reads.persona_id, ""
        titled = True  # named by its first message
    else:
        locked = (
            reads.locked
            if one_read
            else (
                yield from turn_sql.conversation_locked(
                    user_id=user_id, conversation_id=conversation_id
                )
            )
        )
        if locked is None:
            raise NotFound("No such conversation.")
        if not locked.usable:
            raise Forbidden(
                f"You can no longer chat with {locked.persona.name}: this conversation "
                "stays readable. Start a new chat to go on."
            )
        persona, persona_id, title = locked.persona, locked.persona_id, locked.title
        # Made empty (`POST /api/conversations/`): named by its first message, as a new one
        # is. One with messages keeps its title, even an empty one (cleared in admin).
        titled = not title and locked.leaf_id is None
        if parent_given:
            yield turn_sql.ORM
        parent = _parent_for(conversation_id, locked, parent_id, parent_given)
    if attachment_ids:
        yield turn_sql.ORM
    uploads = _uploads_for_send(user_id, attachment_ids, persona)
    _refuse_exhausted(_budget(reads.budget, start, resets))
    if check_persona is not None:
        check_persona(persona)
    if titled:
        title = title_from_message(content or uploads[0].name)
    # Chosen here so that a new conversation is created already pointing at it (the
    # foreign key is checked at commit): no second write to set the active leaf.
    message_id = uuid.uuid4()
    target = conversation_id or uuid.uuid4()
    ahead: TurnContext | None = None
    if conversation_id is None and not uploads:
        # A new conversation has no history: its reply's prompt is known now, and the model's
        # request may go out while the message is written.
        ahead = _begun(
            user_id, target, title, client_id, message_id, content, persona, reads.profile
        )
        yield turn_sql.Ahead(ahead)
    # On PostgreSQL an existing conversation's write also reads its history.
    inserted, path_rows = yield from turn_sql.message_insert(
        message_id=message_id,
        conversation_id=target,
        user_id=user_id,
        content=content,
        client_id=client_id,
        parent_id=parent,
        now=timezone.now(),
        new_conversation=(persona_id, title) if conversation_id is None else None,
        history_limit=history_limit,
        title=title if titled and conversation_id is not None else None,
    )
    if not inserted:
        raise _SentMeanwhile
    if ahead is not None:
        return ahead
    if uploads:
        Attachment.objects.bulk_create(
            Attachment(message_id=message_id, upload=upload, position=position)
            for position, upload in enumerate(uploads)
        )
    if path_rows is None:
        if parent is not None:
            yield turn_sql.ORM  # SQLite: the history is a statement of its own
        path = _path_items(parent, history_limit)
    else:
        path = _items_from(path_rows)
    return _begun(
        user_id,
        target,
        title,
        client_id,
        message_id,
        content,
        persona,
        reads.profile,
        titled=titled,
        history=tuple(item for _, item in path),
        parent=parent,
        attachments=tuple(_attachment_info(upload) for upload in uploads),
    )


def _begun(
    user_id: int,
    conversation_id: uuid.UUID,
    title: str,
    client_id: uuid.UUID,
    message_id: uuid.UUID,
    content: str,
    persona: PersonaInfo,
    profile: ProfileInfo,
    *,
    titled: bool = True,
    history: tuple[HistoryItem, ...] = (),
    parent: uuid.UUID | None = None,
    attachments: tuple[AttachmentInfo, ...] = (),
) -> TurnContext:
    """A turn's context once its message `message_id` is written (a new conversation's, by
    default: no history, no parent, and named by this turn: `titled`)."""
    return TurnContext(
        user_id=user_id,
        conversation_id=conversation_id,
        title=title,
        titled=titled,
        client_id=client_id,
        user_message_id=message_id,
        message_id=reply_id_for(message_id),
        content=content,
        persona=persona,
        profile=profile,
        history=history,
        user_parent_id=parent,
        attachments=attachments,
    )


def _attachment_info(upload: Upload) -> AttachmentInfo:
    return AttachmentInfo(
        id=upload.id,
        name=upload.name,
        kind=upload.kind,
        content_type=upload.content_type,
        file=upload.file.name,
        text=upload.text,
        width=upload.width,
        height=upload.height,
    )


@transaction.atomic
def turn_regenerate(
    *,
    user_id: int,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    client_id: uuid.UUID,
    history_limit: int,
    check_persona: Callable[[PersonaInfo], object] | None = None,
    session_key: str | None = None,
) -> TurnContext:
    """Begin a new reply to the user message that `message_id` (a reply) answers.

    Nothing is inserted: the active path moves to the user message, and the new reply is
    saved as a sibling of `message_id` under an id derived from the user message and the
    request's client_id, so a repeated request finds it and it is saved once.
    """
    _check_user(user_id, session_key)
    if Message.objects.filter(
        owner_id=user_id, role=Message.Role.USER, client_id=client_id
    ).exists():
        raise Invalid("This client_id was already used for another message.")
    conversation = _conversation_locked(user_id, conversation_id)
    target = _reply_in(conversation.id, message_id)
    question = target.parent
    assert question is not None  # a database constraint: every reply has a parent
    reply_id = regenerate_id_for(question.id, client_id)
    saved = Message.objects.filter(id=reply_id).first()
    if saved is None:
        budget_check(user_id=user_id)
    if saved is not None:
        return _context_for(
            question,
            persona=conversation.persona,
            history_limit=history_limit,
            title=conversation.title,
            client_id=client_id,
            reply=saved,
            reply_id=reply_id,
            regenerated=True,
        )
    if check_persona is not None:
        check_persona(_persona_info(conversation.persona))
    Conversation.objects.filter(id=conversation.id).update(
        updated_at=timezone.now(), current_leaf_id=question.id
    )
    ctx = _context_for(
        question,
        persona=conversation.persona,
        history_limit=history_limit,
        title=conversation.title,
        client_id=client_id,
        reply_id=reply_id,
        duplicate=False,
        regenerated=True,
    )
    return replace(ctx, age=0.0)


def _uploads_for_send(
    user_id: int, attachment_ids: tuple[uuid.UUID, ...], persona: PersonaInfo
) -> list[Upload]:
    """The sender's own uploads, in the order given; any other id is not found (whether it
    is someone else's or nobody's is not told). Images need a persona that reads them."""
    if not attachment_ids:
        return []
    # Locked: a delete of one of them under way (upload_delete locks it first) is waited
    # out and the file then not found, instead of failing the commit on the foreign key.
    mine = Upload.objects.select_for_update().filter(owner_id=user_id, id__in=attachment_ids)
    found = {u.id: u for u in mine}
    if len(found) != len(set(attachment_ids)):
        raise NotFound("No such attachment: upload the file again.")
    uploads = [found[upload_id] for upload_id in attachment_ids]
    if not persona.accepts_images and any(u.kind == Upload.Kind.IMAGE for u in uploads):
        raise Invalid(
            f"{persona.name} cannot read images. Remove them, or start a new chat with a "
            "persona that can."
        )
    return uploads


@functools.cache
def _may_use_persona_sql() -> str:
    """Whether the user may use the locked conversation's persona (its groups, if any, hold
    them), as SQL: the ORM's two Exists subqueries cost more to compile each turn than to
    run."""
    quote = connection.ops.quote_name
    through = quote(Persona.groups.through._meta.db_table)
    members = quote(get_user_model().groups.through._meta.db_table)
    persona = f"{quote(Conversation._meta.db_table)}.{quote('persona_id')}"
    return (
        f"(NOT EXISTS (SELECT 1 FROM {through} t WHERE t.persona_id = {persona}) OR EXISTS ("
        f"SELECT 1 FROM {through} t JOIN {members} m ON m.group_id = t.group_id "
        f"WHERE t.persona_id = {persona} AND m.user_id = %s))"
    )


def _conversation_locked(user_id: int, conversation_id: uuid.UUID) -> Conversation:
    # The row lock serialises concurrent turns on one conversation across workers. Whether
    # the user may still use its persona is read in the same statement. The active leaf is
    # not joined here: a statement that waited for the lock would join it as of its own
    # start, not as the transaction it waited for left it (see `turn_sql._locked`).
    conversation = (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("persona")
        .filter(id=conversation_id, owner_id=user_id)
        .annotate(member=RawSQL(_may_use_persona_sql(), [user_id]))
        .first()
    )
    if conversation is None:
        raise NotFound("No such conversation.")
    if not (conversation.member and conversation.persona.is_active):
        raise Forbidden(
            f"You can no longer chat with {conversation.persona.name}: this conversation "
            "stays readable. Start a new chat to go on."
        )
    return conversation


@dataclass(frozen=True)
class Budget:
    period: str
    period_start: datetime
    resets_at: datetime
    used_tokens: int
    limit_tokens: int | None  # None: no limit

    @property
    def exhausted(self) -> bool:
        return self.limit_tokens is not None and self.used_tokens >= self.limit_tokens


def budget_for(*, user_id: int) -> Budget:
    """The user's tokens this period and their limit, in one statement: the period's
    counters summed, and the overrides (see `turn_sql.budget_limit`)."""
    start, resets = period_bounds(cast(Period, settings.TOKEN_BUDGET_PERIOD), timezone.now())
    return _budget(turn_sql.budget_row(user_id, start.date()), start, resets)


def _budget(row: tuple[Any, ...], start: datetime, resets: datetime) -> Budget:
    used, limit = turn_sql.budget_limit(row, settings.TOKEN_BUDGET)
    return Budget(
        period=settings.TOKEN_BUDGET_PERIOD,
        period_start=start,
        resets_at=resets,
        used_tokens=used,
        limit_tokens=limit,
    )


def budget_check(*, user_id: int) -> None:
    """Refuse a turn once the user's tokens for this period are used up. A reply that
    started is never cut short: only turns that have not begun are refused."""
    _refuse_exhausted(budget_for(user_id=user_id))


def _refuse_exhausted(budget: Budget) -> None:
    if budget.exhausted:
        wait = max(1, math.ceil((budget.resets_at - timezone.now()).total_seconds()))
        when = {"day": "today", "week": "this week", "month": "this month"}[budget.period]
        raise QuotaExceeded(
            f"You have used your tokens for {when}; they renew at "
            f"{budget.resets_at:%H:%M} UTC (in {duration_text(wait)}).",
            retry_after=wait,
        )


def usage_by_persona(*, user_id: int, since: datetime) -> list[tuple[str, int]]:
    """(persona slug, tokens) of the user's counters since `since`, most tokens first."""
    rows = (
        TokenUsage.objects.filter(user_id=user_id, day__gte=since.date())
        .values("persona__slug")
        .annotate(tokens=Sum("tokens"))
        .order_by("-tokens", "persona__slug")
    )
    return [(row["persona__slug"], int(row["tokens"])) for row in rows]


def _reply_in(conversation_id: uuid.UUID, message_id: uuid.UUID) -> Message:
    reply = (
        Message.objects.select_related("parent")
        .filter(id=message_id, conversation_id=conversation_id, role=Message.Role.ASSISTANT)
        .first()
    )
    if reply is None:
        raise NotFound("No such message in this conversation.")
    return reply


def _parent_for(
    conversation_id: uuid.UUID,
    locked: turn_sql.LockedConversation,
    parent_id: uuid.UUID | None,
    given: bool,
) -> uuid.UUID | None:
    """The reply a new user message follows: the one named, or the active path's end."""
    if given:
        if parent_id is None:
            return None
        return _reply_in(conversation_id, parent_id).id
    if locked.leaf_id is None:
        return None
    # A user message at the end had its reply cut off: the new one becomes its version.
    return locked.leaf_id if locked.leaf_role == Message.Role.ASSISTANT else locked.leaf_parent_id


def _duplicate(
    message: Message, conversation_id: uuid.UUID | None, history_limit: int
) -> TurnContext:
    if conversation_id is not None and message.conversation_id != conversation_id:
        raise Invalid("This client_id was already used for another message.")
    conversation = Conversation.objects.select_related("persona").get(id=message.conversation_id)
    return _context_for(
        message,
        persona=conversation.persona,
        history_limit=history_limit,
        title=conversation.title,
        reply=_first_reply(message.id),
    )


def reply_id_for(user_message_id: uuid.UUID) -> uuid.UUID:
    """The id the first reply to a user message is saved under, whoever saves it: derived,
    so it can only ever be saved once."""
    return uuid.uuid5(user_message_id, "reply")


def regenerate_id_for(user_message_id: uuid.UUID, client_id: uuid.UUID) -> uuid.UUID:
    """The id of the reply a regenerate request makes: one per request, never reused."""
    return uuid.uuid5(user_message_id, f"regenerate:{client_id}")


def _first_reply(user_message_id: uuid.UUID) -> Message | None:
    return (
        Message.objects.filter(parent_id=user_message_id, role=Message.Role.ASSISTANT)
        .order_by("created_at", "id")
        .first()
    )


def path_history(*, leaf_id: uuid.UUID | None, limit: int) -> list[HistoryItem]:
    """The last `limit` messages of the path from the root down to `leaf_id`, oldest first.

    One recursive query, whatever the path's length: the prompt never sees another branch.
    Empty messages (a reply cut off before its first word) are left out.
    """
    return [item for _, item in _path_items(leaf_id, limit)]


def _path_items(leaf_id: uuid.UUID | None, limit: int) -> list[tuple[uuid.UUID, HistoryItem]]:
    """(message id, item) along the path, with each message's attachments joined in the
    same statement: attachments cost a turn no round trip of its own."""
    if leaf_id is None or limit <= 0:
        return []
    return _items_from(turn_sql.path_rows(leaf_id, limit))


def _items_from(rows: list[tuple[Any, ...]]) -> list[tuple[uuid.UUID, HistoryItem]]:
    """`turn_sql.path_rows`'s rows as (message id, item), empty messages left out."""
    items: dict[uuid.UUID, tuple[str, str, list[AttachmentInfo]]] = {}
    for message_id, role, content, upload_id, *upload in rows:
        message_id = _as_uuid(message_id)
        _, _, found = items.setdefault(message_id, (role, content, []))
        if upload_id is not None:
            name, kind, content_type, file, text, width, height = upload
            found.append(
                AttachmentInfo(
                    id=_as_uuid(upload_id),
                    name=name,
                    kind=kind,
                    content_type=content_type,
                    file=file,
                    text=text,
                    width=width,
                    height=height,
                )
            )
    return [
        (message_id, HistoryItem(role=role, content=content, attachments=tuple(found)))
        for message_id, (role, content, found) in items.items()
        if content or found
    ]


def _as_uuid(value: Any) -> uuid.UUID:
    # PostgreSQL hands back UUIDs; SQLite, the hex text Django stores there.
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _context_for(
    message: Message,
    *,
    persona: Persona,
    history_limit: int,
    title: str,
    reply: Message | None = None,
    reply_id: uuid.UUID | None = None,
    client_id: uuid.UUID | None = None,
    duplicate: bool = True,
    regenerated: bool = False,
) -> TurnContext:
    """The turn of a user message: `reply` when it was saved before (a re-send), else it
    is generated under `reply_id` (the first reply's derived id unless given)."""
    owner_id = message.owner_id or message.conversation.owner_id
    profile, _ = Profile.objects.get_or_create(user_id=owner_id)
    # The path through the message itself: its own attachments come in the same statement.
    path = _path_items(message.id, history_limit + 1)
    attachments: tuple[AttachmentInfo, ...] = ()
    if path and path[-1][0] == message.id:
        attachments = path.pop()[1].attachments
    history = tuple(item for _, item in path[-history_limit:]) if history_limit > 0 else ()
    return TurnContext(
        user_id=owner_id,
        conversation_id=message.conversation_id,
        title=title,
        client_id=client_id or message.client_id or uuid.uuid4(),
        user_message_id=message.id,
        message_id=reply.id if reply else (reply_id or reply_id_for(message.id)),
        content=message.content,
        persona=_persona_info(persona),
        profile=ProfileInfo(display_name=profile.display_name, about=profile.about),
        history=history,
        duplicate=duplicate,
        existing_reply=_reply_info(reply) if reply else None,
        age=(timezone.now() - message.created_at).total_seconds(),
        user_parent_id=message.parent_id,
        regenerated=regenerated,
        attachments=attachments,
    )


def message_sent(
    *, user_id: int, client_id: uuid.UUID, regenerate: uuid.UUID | None = None
) -> bool:
    """Whether this send (or regenerate request) was saved before."""
    if regenerate is not None:
        target = Message.objects.filter(
            id=regenerate, conversation__owner_id=user_id, role=Message.Role.ASSISTANT
        ).first()
        return target is not None and bool(
            target.parent_id
            and Message.objects.filter(id=regenerate_id_for(target.parent_id, client_id)).exists()
        )
    return Message.objects.filter(
        owner_id=user_id, role=Message.Role.USER, client_id=client_id
    ).exists()


def turn_context(
    *,
    user_id: int,
    client_id: uuid.UUID,
    history_limit: int,
    regenerate: uuid.UUID | None = None,
) -> TurnContext | None:
    """The turn a user's message of this client_id began (or, with `regenerate`, the turn
    of that regenerate request), as a re-send finds it."""
    if regenerate is not None:
        target = (
            Message.objects.select_related("parent__conversation__persona")
            .filter(id=regenerate, conversation__owner_id=user_id, role=Message.Role.ASSISTANT)
            .first()
        )
        if target is None or target.parent is None:
            return None
        question = target.parent
        reply_id = regenerate_id_for(question.id, client_id)
        ctx = _context_for(
            question,
            persona=question.conversation.persona,
            history_limit=history_limit,
            title=question.conversation.title,
            client_id=client_id,
            reply=Message.objects.filter(id=reply_id).first(),
            reply_id=reply_id,
            regenerated=True,
        )
        # The question's age says nothing of this request's (which saves no row until its
        # reply): no twin of it is waited for here. Twins are found while they stream.
        return replace(ctx, age=math.inf)
    message = (
        Message.objects.select_related("conversation__persona")
        .filter(owner_id=user_id, role=Message.Role.USER, client_id=client_id)
        .first()
    )
    if message is None:
        return None
    return _context_for(
        message,
        persona=message.conversation.persona,
        history_limit=history_limit,
        title=message.conversation.title,
        reply=_first_reply(message.id),
    )


def reply_save_steps(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    error: str,
    owner_id: int | None = None,
    persona_slug: str | None = None,
    prompt_chars: int = 0,
) -> turn_sql.Steps[ReplyInfo | None]:
    """Insert the assistant's reply once, and return the row as saved.

    If the reply was saved before (a recovering worker, a retried save), the earlier row
    stands and is returned, so `chat.done` always carries what the database holds. None when
    the conversation was deleted meanwhile: the reply is not saved, but its tokens still
    count to `owner_id` and `persona_slug` where the caller knows them (the live turn
    does), or deleting a chat mid-reply would make its reply free. On PostgreSQL this is
    one statement (two when the reply was saved before), each atomic on its own.
    """
    if not turn_sql.on_postgresql():
        yield turn_sql.ORM
        return _reply_save_orm(
            message_id=message_id,
            conversation_id=conversation_id,
            user_message_id=user_message_id,
            content=content,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            error=error,
            owner_id=owner_id,
            persona_slug=persona_slug,
            prompt_chars=prompt_chars,
        )
    now = timezone.now()
    row = yield from turn_sql.reply_insert_pg(
        message_id=message_id,
        conversation_id=conversation_id,
        user_message_id=user_message_id,
        content=content,
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error=error[:500],
        tokens=reply_tokens(input_tokens, output_tokens, content, prompt_chars),
        now=now,
        day=now.astimezone(UTC).date(),
        owner_id=owner_id,
        persona_slug=persona_slug,
    )
    if not row.moved:
        return None
    if not row.inserted:
        return (yield from turn_sql.reply_row(message_id))
    return ReplyInfo(
        message_id=message_id,
        content=content,
        status=status,
        error=error[:500],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


# The same save on this thread's connection (SQLite, TURN_DB_ON_LOOP off, tests).
reply_save = turn_sql.run_here(reply_save_steps)


@transaction.atomic
def _reply_save_orm(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    error: str,
    owner_id: int | None,
    persona_slug: str | None,
    prompt_chars: int,
) -> ReplyInfo | None:
    """`reply_save` where data-modifying CTEs are not to be had (SQLite)."""
    tokens = reply_tokens(input_tokens, output_tokens, content, prompt_chars)
    # The update doubles as the check that the conversation still exists. The active path
    # moves on to the reply only if it still ends at its question: a user who switched to
    # another version meanwhile stays there. (The foreign key is checked at commit.)
    moved = Conversation.objects.filter(id=conversation_id).update(
        updated_at=timezone.now(),
        current_leaf_id=Case(
            When(current_leaf_id=user_message_id, then=Value(message_id)),
            default=F("current_leaf_id"),
        ),
    )
    if not moved:
        _usage_count_gone(
            owner_id=owner_id,
            persona_slug=persona_slug,
            tokens=tokens,
        )
        return None
    reply, created = Message.objects.get_or_create(
        id=message_id,
        defaults={
            "conversation_id": conversation_id,
            "parent_id": user_message_id,
            "role": Message.Role.ASSISTANT,
            "content": content,
            "status": status,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "error": error[:500],
        },
    )
    if created:
        usage_count(conversation_id=conversation_id, tokens=tokens)
    return _reply_info(reply)


def reply_tokens(
    input_tokens: int | None, output_tokens: int | None, content: str, prompt_chars: int = 0
) -> int:
    """What a reply costs: the provider's usage, or where it reported none (a stopped reply:
    providers report at the end) characters / 4, of its prompt and its words."""
    if input_tokens is None and output_tokens is None:
        return math.ceil((prompt_chars + len(content)) / 4)
    return (input_tokens or 0) + (output_tokens or 0)


def _usage_count_gone(*, owner_id: int | None, persona_slug: str | None, tokens: int) -> None:
    """The tokens of a reply whose conversation is gone, to its owner and persona while
    both exist: what `turn_sql.reply_insert_pg` counts then, done with the ORM."""
    users = connection.ops.quote_name(get_user_model()._meta.db_table)
    personas = connection.ops.quote_name(Persona._meta.db_table)
    _usage_add(
        f"SELECT owner.id, persona.id, %s, %s FROM {users} owner, {personas} persona "
        "WHERE owner.id = %s AND persona.slug = %s",
        [owner_id, persona_slug],
        tokens=tokens,
    )


def usage_count(*, conversation_id: uuid.UUID, tokens: int) -> None:
    """Add a saved reply's tokens to its owner's counter for this UTC day, in the caller's
    transaction: one upsert, so two workers saving at once both count."""
    conversations = connection.ops.quote_name(Conversation._meta.db_table)
    pk = Conversation._meta.pk
    assert pk is not None
    _usage_add(
        f"SELECT owner_id, persona_id, %s, %s FROM {conversations} WHERE id = %s",
        [pk.get_db_prep_value(conversation_id, connection)],
        tokens=tokens,
    )


def _usage_add(rows: str, params: list[Any], *, tokens: int) -> None:
    """Add `tokens` to today's (UTC) counter of the (user, persona) that `rows` selects, as
    (user_id, persona_id, day, tokens) with the day and tokens as its first two parameters:
    one upsert; nothing when it selects no row."""
    table = connection.ops.quote_name(TokenUsage._meta.db_table)
    sql = f"""
        INSERT INTO {table} (user_id, persona_id, day, tokens)
        {rows}
        ON CONFLICT (user_id, persona_id, day)
        DO UPDATE SET tokens = {table}.tokens + excluded.tokens
    """  # the table names are the models' own, never user input
    day = timezone.now().astimezone(UTC).date()
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datefield_value(day), tokens, *params])


def reply_find(*, message_id: uuid.UUID) -> ReplyInfo | None:
    reply = Message.objects.filter(id=message_id, role=Message.Role.ASSISTANT).first()
    return _reply_info(reply) if reply else None


def conversation_title_replace(*, conversation_id: uuid.UUID, title: str, only_if: str) -> bool:
    """Set a generated title, unless the title changed since (the user renamed it)."""
    updated = Conversation.objects.filter(id=conversation_id, title=only_if).update(title=title)
    return updated == 1


def conversation_lock(*, conversation_id: uuid.UUID) -> bool:
    """Lock a conversation's row as turns lock it (turn_begin, reply_save), inside the
    caller's transaction; False when it is gone. A write that would otherwise race a turn,
    a delete or a share waits for the other's commit and sees what it left."""
    locked = Conversation.objects.select_for_update(of=("self",)).filter(id=conversation_id)
    return bool(list(locked.values_list("pk", flat=True)))


@transaction.atomic
def conversation_delete(*, conversation_id: uuid.UUID) -> None:
    """Delete a conversation and its whole tree. Locked first, so a turn that wrote its
    message meanwhile has committed before the delete collects the rows (unlocked, that
    message failed the delete's foreign-key check at commit), and one that comes after
    waits and finds the chat gone."""
    if conversation_lock(conversation_id=conversation_id):
        Conversation.objects.filter(id=conversation_id).delete()


@transaction.atomic
def message_append(
    *, conversation: Conversation, role: str, content: str, **fields: Any
) -> Message:
    """Add a message at the end of the active path, and make it the end (copies, fixtures)."""
    message = Message.objects.create(
        conversation=conversation,
        role=role,
        content=content,
        parent_id=conversation.current_leaf_id,
        owner_id=conversation.owner_id if role == Message.Role.USER else None,
        **fields,
    )
    Conversation.objects.filter(id=conversation.id).update(current_leaf_id=message.id)
    conversation.current_leaf = message
    return message


def message_rate(*, message_id: uuid.UUID, rating: int, comment: str) -> tuple[int | None, str]:
    """The owner's rating of a reply: 1 or -1 with a comment, or 0 to take it back.

    A cleared rating keeps no time and no comment, so "rated in the last N days" counts
    skip it. Returns the rating and comment as stored.
    """
    stored = rating or None
    kept = comment if stored else ""
    Message.objects.filter(id=message_id, role=Message.Role.ASSISTANT).update(
        rating=stored, rating_comment=kept, rated_at=timezone.now() if stored else None
    )
    return stored, kept
