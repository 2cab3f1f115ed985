"""The turn's hot statements as SQL: each round trip reads or writes all it can.

A turn is the one thing every user does many times a minute, and under a burst its ORM work
(compiling a dozen querysets, one round trip each) was what the burst waited for: 250 turns
begun at once queued for seconds on the pool while Python built SQL. Here the reads a turn
needs before it writes (the duplicate check, the user, the persona, the budget, the profile,
and on PostgreSQL an existing conversation's lock) are one SELECT, and the writes are one
statement on PostgreSQL (data-modifying CTEs, with an existing conversation's history) or a
few on SQLite. A socket's handshake reads its session and its user here too (`session_data`,
`user_by_pk`). `services` keeps the rules; this module only knows the tables. The table and
column names are the models' own, never user input.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, ParamSpec, TypeVar

from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection
from django.db.models import AutoField, BigAutoField, IntegerField, QuerySet
from django.db.models.manager import BaseManager

from accounts.models import GroupTokenBudget, Profile, UserTokenBudget
from attachments.models import Attachment, Upload
from conversations.context import PersonaInfo, ProfileInfo, ReplyInfo
from conversations.models import Conversation, Message, TokenUsage
from personas.models import Persona

PERSONA_COLUMNS = (
    "slug",
    "name",
    "description",
    "system_prompt",
    "avatar",
    "provider",
    "model",
    "temperature",
    "accepts_images",
)


T = TypeVar("T")
P = ParamSpec("P")


# --- the steps: statements a driver runs, on a thread or on the event loop -------------------


@dataclass(frozen=True)
class Statement:
    """One round trip. The driver runs it and sends back what `fetch` asks for: "one", its
    first row (None if there is none); "all", the list of its rows; "none", nothing (a
    statement that returns no rows)."""

    sql: str
    params: list[Any]
    fetch: Literal["one", "all", "none"] = "one"


class Orm:
    """A step that says: what comes next uses the ORM (a rare path, such as a re-send or
    a session that needs Django's full check). A thread's driver goes on; the event loop's
    cannot, and hands the whole begin to a thread."""


ORM = Orm()


@dataclass(frozen=True)
class Ahead:
    """A step that says: every check has passed and only the write is left; if it succeeds,
    the steps return this `ctx` (the same object). The event loop's driver hands it on, so
    that the model's request goes out while the message is written; a thread's goes on."""

    ctx: Any  # a TurnContext


# What a turn's statements yield, and what they return at the end.
Steps = Generator[Statement | Orm | Ahead, Any, T]


def run(steps: Steps[T]) -> T:
    """Run `steps` on this thread's Django connection, in the caller's transaction."""
    try:
        step = next(steps)
        while True:
            result = None
            if isinstance(step, Statement):
                with connection.cursor() as cursor:
                    cursor.execute(step.sql, step.params)
                    if step.fetch == "one":
                        result = cursor.fetchone()
                    elif step.fetch == "all":
                        result = cursor.fetchall()
            step = steps.send(result)
    except StopIteration as finished:
        return finished.value


def run_here(steps: Callable[P, Steps[T]]) -> Callable[P, T]:
    """`steps` as a plain function whose statements `run` runs on this thread's connection."""

    @functools.wraps(steps)
    def ran(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(steps(*args, **kwargs))

    return ran


# A turn builds its statements' text and parameters on every begin and save: what they
# depend on of the database is asked once a process, not of `django.db.connection` each time
# (a lookup in the task's connection handler: about a third of the building's time in a
# profile of 1,000 turns). The default database keeps its vendor for the process's life.


@functools.cache
def on_postgresql() -> bool:
    return connection.vendor == "postgresql"


@functools.cache
def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model: Any) -> str:
    return _q(model._meta.db_table)


@functools.cache
def _native_uuids() -> bool:
    return bool(connection.features.has_native_uuid_field)


def _uuid(value: uuid.UUID | None) -> Any:
    """A UUID as the database takes it (SQLite keeps hex text)."""
    if _native_uuids() and (value is None or isinstance(value, uuid.UUID)):
        return value
    pk = Message._meta.pk
    assert pk is not None
    return pk.get_db_prep_value(value, connection)


def _when(value: datetime) -> Any:
    # PostgreSQL's backend passes dates and times as they are; SQLite's makes them text.
    return value if on_postgresql() else connection.ops.adapt_datetimefield_value(value)


def _day(value: date) -> Any:
    return value if on_postgresql() else connection.ops.adapt_datefield_value(value)


def as_uuid(value: Any) -> uuid.UUID | None:
    # PostgreSQL hands back UUIDs; SQLite, the hex text Django stores there.
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(value)


def _persona_select(alias: str) -> str:
    return ", ".join(f"{alias}.{_q(column)}" for column in PERSONA_COLUMNS)


def _persona_from(row: tuple[Any, ...]) -> PersonaInfo:
    values = dict(zip(PERSONA_COLUMNS, row, strict=True))
    values["accepts_images"] = bool(values["accepts_images"])
    return PersonaInfo(**values)


def usable_sql(persona_column: str) -> str:
    """Whether the user (one %s) may use the persona at `persona_column`: it has no groups,
    or one of them holds the user."""
    through = _q(Persona.groups.through._meta.db_table)
    members = _q(get_user_model().groups.through._meta.db_table)
    return (
        f"(NOT EXISTS (SELECT 1 FROM {through} t WHERE t.persona_id = {persona_column}) OR "
        f"EXISTS (SELECT 1 FROM {through} t JOIN {members} m ON m.group_id = t.group_id "
        f"WHERE t.persona_id = {persona_column} AND m.user_id = %s))"
    )


# --- the budget -----------------------------------------------------------------------------


def budget_columns() -> str:
    """The six columns a budget is made of (see `budget_limit`); seven %s: user, period
    start, then user five times."""
    usage = _table(TokenUsage)
    own = _table(UserTokenBudget)
    budgets = _table(GroupTokenBudget)
    members = _q(get_user_model().groups.through._meta.db_table)
    mine = f"FROM {budgets} b JOIN {members} m ON m.group_id = b.group_id WHERE m.user_id = %s"
    return f"""
        COALESCE((SELECT SUM(tokens) FROM {usage} WHERE user_id = %s AND day >= %s), 0),
        EXISTS (SELECT 1 FROM {own} WHERE user_id = %s),
        (SELECT tokens FROM {own} WHERE user_id = %s),
        EXISTS (SELECT 1 {mine}),
        EXISTS (SELECT 1 {mine} AND b.tokens IS NULL),
        (SELECT MAX(b.tokens) {mine})
    """


def budget_params(user_id: int, start: date) -> list[Any]:
    return [user_id, _day(start), user_id, user_id, user_id, user_id, user_id]


def budget_limit(row: tuple[Any, ...], default: int | None) -> tuple[int, int | None]:
    """(tokens used, limit) from `budget_columns`: a user override wins; else the most
    generous of the user's groups (one without a limit is unlimited); else `default`."""
    used, has_own, own_tokens, has_group, group_unlimited, group_most = row
    if has_own:
        return int(used), own_tokens
    if has_group:
        return int(used), None if group_unlimited else group_most
    return int(used), default


def budget_row(user_id: int, start: date) -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {budget_columns()}", budget_params(user_id, start))
        return tuple(cursor.fetchone())


# --- the turn's reads -----------------------------------------------------------------------


@dataclass(frozen=True)
class TurnReads:
    """What a turn reads before it writes, from one SELECT."""

    existing: uuid.UUID | None  # the user's message of this client_id, if it was saved
    active: bool  # the user exists and is active
    budget: tuple[Any, ...]  # `budget_columns`
    profile: ProfileInfo
    persona: PersonaInfo | None  # for a new conversation: the one it would get
    persona_id: int | None
    session: SessionRow | None  # when asked for: the socket's session, read with the rest
    # When asked for (PostgreSQL): the conversation, locked by this same read; None if the
    # user has no such conversation.
    locked: LockedConversation | None = None


@dataclass(frozen=True)
class SessionRow:
    """A socket's session as the turn reads it, for `services` to check by Django's rules."""

    data: str | None  # the encoded session, unless it is gone or expired
    password: str | None  # the user's password hash, unless the user is gone or inactive


def _session_columns() -> str:
    """Two columns of a database-backed session; three %s: its key, now, the user."""
    sessions = _table(Session)
    users = _table(get_user_model())
    return f"""
        (SELECT {_q("session_data")} FROM {sessions}
         WHERE {_q("session_key")} = %s AND {_q("expire_date")} > %s),
        (SELECT password FROM {users} WHERE id = %s AND is_active)
    """


@functools.cache
def _session_data_sql() -> str:
    return (
        f"SELECT {_q('session_data')} FROM {_table(Session)}"
        f" WHERE {_q('session_key')} = %s AND {_q('expire_date')} > %s"
    )


def session_data(session_key: str, now: datetime) -> Steps[str | None]:
    """A database-backed session's encoded data, unless it is gone or expired at `now`: the
    row Django's own store loads."""
    row = yield Statement(_session_data_sql(), [session_key, _when(now)])
    return None if row is None else row[0]


@functools.cache
def _user_sql() -> str:
    users = get_user_model()
    columns = ", ".join(_q(field.column) for field in users._meta.concrete_fields)
    return f"SELECT {columns} FROM {_table(users)} WHERE {_q(users._meta.pk.column)} = %s"


@functools.cache
def users_read_plainly() -> bool:
    """Whether `user_by_pk` reads a user as the ORM would, into what the handshake checks: a
    model of one table, with an integer key and a session hash, whose default manager and
    queryset filter nothing, and no column converted from what the database hands back."""
    users = get_user_model()
    manager = users._default_manager
    return (
        not users._meta.parents
        and isinstance(users._meta.pk, (AutoField, BigAutoField, IntegerField))
        and hasattr(users, "get_session_auth_hash")
        and type(manager).get_queryset is BaseManager.get_queryset
        and getattr(manager, "_queryset_class", None) is QuerySet
        and not any(
            field.get_db_converters(connection)  # type: ignore[attr-defined]
            or connection.ops.get_db_converters(field.get_col(users._meta.db_table))
            for field in users._meta.concrete_fields
        )
    )


def user_by_pk(pk: Any) -> Steps[Any]:
    """The user with that primary key, as `_default_manager.get(pk=pk)` loads one (where
    `users_read_plainly`), or None."""
    row = yield Statement(_user_sql(), [pk])
    if row is None:
        return None
    users = get_user_model()
    return users.from_db(
        connection.alias, [field.attname for field in users._meta.concrete_fields], row
    )


@functools.cache
def _reads_sql(new: bool, by_slug: bool, with_session: bool, locking: bool = False) -> str:
    users = _table(get_user_model())
    messages = _table(Message)
    profiles = _table(Profile)
    personas = _table(Persona)
    persona_join = "ON 1 = 0"
    if new:
        chosen = "x.slug = %s" if by_slug else "1 = 1"
        persona_join = f"""ON p.id = (
            SELECT x.id FROM {personas} x
            WHERE x.is_active AND {usable_sql("x.id")} AND {chosen}
            ORDER BY x.is_default DESC, x.{_q("order")}, x.name LIMIT 1
        )"""
    return f"""
        SELECT
            (SELECT id FROM {messages}
             WHERE owner_id = %s AND role = 'user' AND client_id = %s),
            EXISTS (SELECT 1 FROM {users} WHERE id = %s AND is_active),
            pr.display_name, pr.about, p.id, {_persona_select("p")},
            {budget_columns()}{"," + _session_columns() if with_session else ""}
        {", k.*" if locking else ""}
        FROM (SELECT 1 AS one) one
        LEFT JOIN {profiles} pr ON pr.user_id = %s
        LEFT JOIN {personas} p {persona_join}
        {f"LEFT JOIN LATERAL ({_locked_sql()}) k ON true" if locking else ""}
    """


def turn_reads(
    *,
    user_id: int,
    client_id: uuid.UUID,
    budget_start: date,
    new: bool,
    persona_slug: str | None,
    session_key: str | None = None,
    now: datetime | None = None,
    lock_conversation: uuid.UUID | None = None,
) -> Steps[TurnReads]:
    """`session_key` (with `now`): also read that database-backed session.
    `lock_conversation` (PostgreSQL): also read and lock that conversation of the user's, as
    `conversation_locked` does, in this same round trip."""
    # In the text's order: the columns, the budget's, the session's, the profile's join, the
    # persona's.
    params: list[Any] = [user_id, _uuid(client_id), user_id]
    params += budget_params(user_id, budget_start)
    with_session = session_key is not None
    if with_session:
        assert now is not None
        params += [session_key, _when(now), user_id]
    params.append(user_id)
    if new:
        params.append(user_id)
        if persona_slug is not None:
            params.append(persona_slug)
    locking = lock_conversation is not None
    if lock_conversation is not None:
        params += _locked_params(user_id, lock_conversation)
    row = yield Statement(_reads_sql(new, persona_slug is not None, with_session, locking), params)
    locked = None
    if locking:
        row, locked_row = row[:-_LOCKED_WIDTH], row[-_LOCKED_WIDTH:]
        if locked_row[1] is not None:
            locked = yield from _locked(locked_row)
    existing, active, display_name, about, persona_id, *rest = row
    session = SessionRow(*rest[-2:]) if with_session else None
    if with_session:
        rest = rest[:-2]
    persona_row, budget = rest[: len(PERSONA_COLUMNS)], rest[len(PERSONA_COLUMNS) :]
    return TurnReads(
        existing=as_uuid(existing),
        active=bool(active),
        budget=tuple(budget),
        profile=ProfileInfo(display_name=display_name or "", about=about or ""),
        persona=_persona_from(tuple(persona_row)) if persona_id is not None else None,
        persona_id=persona_id,
        session=session,
        locked=locked,
    )


@dataclass(frozen=True)
class LockedConversation:
    title: str
    persona_id: int
    persona: PersonaInfo
    usable: bool  # the persona is active and the user may still use it
    leaf_id: uuid.UUID | None
    leaf_role: str | None
    leaf_parent_id: uuid.UUID | None


@functools.cache
def _locked_sql() -> str:
    conversations = _table(Conversation)
    personas = _table(Persona)
    messages = _table(Message)
    lock = " FOR UPDATE OF c" if connection.features.has_select_for_update_of else ""
    return f"""
        SELECT c.title, c.persona_id, {_persona_select("p")}, p.is_active,
            {usable_sql("c.persona_id")}, c.current_leaf_id, l.id, l.role, l.parent_id
        FROM {conversations} c
        JOIN {personas} p ON p.id = c.persona_id
        LEFT JOIN {messages} l ON l.id = c.current_leaf_id
        WHERE c.id = %s AND c.owner_id = %s{lock}
    """


# The columns `_locked_sql` selects: title, persona id, the persona's, is_active, usable, the
# active leaf's id as the conversation holds it, and the leaf's id, role and parent as joined.
_LOCKED_WIDTH = 2 + len(PERSONA_COLUMNS) + 6


def _locked_params(user_id: int, conversation_id: uuid.UUID) -> list[Any]:
    return [user_id, _uuid(conversation_id), user_id]


def conversation_locked(
    *, user_id: int, conversation_id: uuid.UUID
) -> Steps[LockedConversation | None]:
    """The user's conversation, its persona and its active leaf, with the row locked: the
    lock serialises concurrent turns on one conversation across workers."""
    row = yield Statement(_locked_sql(), _locked_params(user_id, conversation_id))
    if row is None:
        return None
    return (yield from _locked(row))


def _locked(row: tuple[Any, ...]) -> Steps[LockedConversation]:
    """The locked conversation from `_locked_sql`'s columns, its leaf as it is now.

    A statement that waited for the lock (another turn, or a reply's save, held it) sees
    the conversation's row as that transaction left it, but every other row as of its own
    start: a leaf the other transaction wrote is not there to join. The leaf is then read
    again, by a statement of its own that sees the commit (the lock is held by now)."""
    title, persona_id, *rest = row
    persona_row = rest[: len(PERSONA_COLUMNS)]
    active, member, current_leaf, leaf_id, leaf_role, leaf_parent = rest[len(PERSONA_COLUMNS) :]
    if current_leaf is not None and leaf_id != current_leaf:
        leaf_id, leaf_role, leaf_parent = yield Statement(
            f"SELECT id, role, parent_id FROM {_table(Message)} WHERE id = %s",
            [_uuid(as_uuid(current_leaf))],
        )
    return LockedConversation(
        title=title,
        persona_id=persona_id,
        persona=_persona_from(tuple(persona_row)),
        usable=bool(active) and bool(member),
        leaf_id=as_uuid(leaf_id),
        leaf_role=leaf_role,
        leaf_parent_id=as_uuid(leaf_parent),
    )


# --- the turn's writes ----------------------------------------------------------------------

_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, client_id, owner_id, parent_id, "
    "input_tokens, output_tokens, error, rating, rating_comment, rated_at, created_at"
)


@functools.cache
def _user_message_insert() -> str:
    """The user's message, unless one of this user and client_id exists (the constraint
    `message_unique_owner_client_id`): then nothing, and no row comes back."""
    return f"""
        INSERT INTO {_table(Message)} ({_MESSAGE_COLUMNS})
        VALUES (%s, %s, 'user', %s, 'complete', %s, %s, %s, NULL, NULL, '', NULL, '', NULL, %s)
        ON CONFLICT (owner_id, client_id) WHERE role = 'user' DO NOTHING
        RETURNING id
    """


def message_insert(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_id: int,
    content: str,
    client_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    now: datetime,
    new_conversation: tuple[int, str] | None,
    history_limit: int = 0,
    title: str | None = None,
) -> Steps[tuple[bool, list[tuple[Any, ...]] | None]]:
    """Insert the user's message and make it the conversation's active leaf, creating the
    conversation first when `new_conversation` (persona id, title) is given, else giving
    the existing one `title` where it is given. False, with nothing written, when a message
    of this client_id exists (on SQLite the caller rolls back the conversation it inserted
    first).

    On PostgreSQL, into an existing conversation, the same statement also reads the path
    that ends at `parent_id` (its last `history_limit` messages), as `path_rows` gives it.
    It is read as of the statement's start, so without the new message, as the history
    must be. Elsewhere no path comes back (None), and the caller reads it."""
    message = [
        _uuid(message_id),
        _uuid(conversation_id),
        content,
        _uuid(client_id),
        user_id,
        _uuid(parent_id),
        _when(now),
    ]
    conversations = _table(Conversation)
    insert = _user_message_insert()
    if new_conversation is not None:
        persona_id, title = new_conversation
        # Created pointing at its message, and the message in it: both foreign keys are
        # checked at commit, which is this statement's end where no transaction is open.
        columns = "(id, owner_id, persona_id, title, created_at, updated_at, current_leaf_id)"
        conversation_params = [
            _uuid(conversation_id),
            user_id,
            persona_id,
            title,
            _when(now),
            _when(now),
            _uuid(message_id),
        ]
        if on_postgresql():
            # One statement: the conversation is made only if the message was inserted,
            # so a client_id sent before leaves nothing behind, in a transaction or not.
            row = yield Statement(
                f"""WITH m AS ({insert}), c AS (
                    INSERT INTO {conversations} {columns}
                    SELECT %s, %s, %s, %s, %s, %s, %s FROM m
                ) SELECT id FROM m""",
                message + conversation_params,
            )
            return row is not None, None
        yield Statement(
            f"INSERT INTO {conversations} {columns} VALUES (%s, %s, %s, %s, %s, %s, %s)",
            conversation_params,
            fetch="none",
        )
        row = yield Statement(insert, message)
        return row is not None, None
    named = "title = %s, " if title is not None else ""
    move = f"UPDATE {conversations} SET updated_at = %s, {named}current_leaf_id = "
    move_params = [_when(now)] if title is None else [_when(now), title]
    if on_postgresql():
        path_from = parent_id if history_limit > 0 else None
        rows = yield Statement(
            f"""WITH RECURSIVE sent AS ({insert}), moved AS (
                {move} sent.id FROM sent WHERE {conversations}.id = %s
                RETURNING sent.id
            ), {_path_cte()}
            SELECT moved.id, {_PATH_COLUMNS}
            FROM (SELECT 1 AS one) one
            LEFT JOIN moved ON true
            LEFT JOIN path ON true
            {_path_joins()}""",
            [*message, *move_params, _uuid(conversation_id), _uuid(path_from), history_limit],
            fetch="all",
        )
        if rows[0][0] is None:
            return False, None
        return True, [row[1:] for row in rows if row[1] is not None]
    row = yield Statement(insert, message)
    if row is None:
        return False, None
    yield Statement(f"{move} %s WHERE id = %s", [*move_params, message[0], message[1]], "none")
    return True, None


# --- the path: a conversation's history along its active branch -----------------------------

_PATH_COLUMNS = (
    "path.id, path.role, path.content, u.id, u.name, u.kind, u.content_type, u.file, u.text, "
    "u.width, u.height"
)


def _path_cte() -> str:
    """`path`: the messages from the one at the first %s up to the root, at most the second
    %s of them, each with its depth (0: the first)."""
    messages = _table(Message)
    return f"""path(id, parent_id, role, content, depth) AS (
            SELECT id, parent_id, role, content, 0 FROM {messages} WHERE id = %s
            UNION ALL
            SELECT m.id, m.parent_id, m.role, m.content, path.depth + 1
            FROM {messages} m JOIN path ON m.id = path.parent_id
            WHERE path.depth + 1 < %s
        )"""


def _path_joins() -> str:
    """Each message's attachments, joined to `path`, oldest message first."""
    return f"""
        LEFT JOIN {_table(Attachment)} a ON a.message_id = path.id
        LEFT JOIN {_table(Upload)} u ON u.id = a.upload_id
        ORDER BY path.depth DESC, a.position
    """


def path_rows(leaf_id: uuid.UUID, limit: int) -> list[tuple[Any, ...]]:
    """The path ending at `leaf_id`, at most `limit` messages: one row per message and
    attachment (`_PATH_COLUMNS`), oldest first. One recursive query, however long."""
    sql = f"WITH RECURSIVE {_path_cte()} SELECT {_PATH_COLUMNS} FROM path {_path_joins()}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [_uuid(leaf_id), limit])
        return list(cursor.fetchall())


@functools.cache
def _reply_insert_sql() -> str:
    conversations = _table(Conversation)
    usage = _table(TokenUsage)
    users = _table(get_user_model())
    personas = _table(Persona)
    return f"""
        WITH moved AS (
            UPDATE {conversations} SET updated_at = %s, current_leaf_id = CASE
                WHEN current_leaf_id = %s THEN %s ELSE current_leaf_id END
            WHERE id = %s
            RETURNING owner_id, persona_id
        ), saved AS (
            INSERT INTO {_table(Message)} ({_MESSAGE_COLUMNS})
            SELECT %s, %s, 'assistant', %s, %s, NULL, NULL, %s, %s, %s, %s, NULL, '', NULL, %s
            FROM moved
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), counted AS (
            INSERT INTO {usage} (user_id, persona_id, day, tokens)
            SELECT owner_id, persona_id, %s, %s FROM moved, saved
            UNION ALL
            SELECT owner.id, persona.id, %s, %s FROM {users} owner, {personas} persona
            WHERE owner.id = %s AND persona.slug = %s AND NOT EXISTS (SELECT 1 FROM moved)
            ON CONFLICT (user_id, persona_id, day)
            DO UPDATE SET tokens = {usage}.tokens + excluded.tokens
        )
        SELECT EXISTS (SELECT 1 FROM moved), EXISTS (SELECT 1 FROM saved)
    """


@dataclass(frozen=True)
class SavedRow:
    moved: bool  # the conversation still exists
    inserted: bool  # this call saved the reply (else an earlier row stands)


def reply_insert_pg(
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_message_id: uuid.UUID,
    content: str,
    status: str,
    input_tokens: int | None,
    output_tokens: int | None,
    error: str,
    tokens: int,
    now: datetime,
    day: date,
    owner_id: int | None,
    persona_slug: str | None,
) -> Steps[SavedRow]:
    """PostgreSQL, one statement (so one round trip, atomic without BEGIN/COMMIT): move the
    active leaf to the reply if it still ends at its question, insert the reply unless it
    was saved before, and count its tokens only if it was not. A conversation deleted while
    its reply streamed saves nothing, but the reply's tokens still count, to `owner_id` and
    the persona `persona_slug` (where they are known and still exist)."""
    sql = _reply_insert_sql()
    params = [
        _when(now),
        _uuid(user_message_id),
        _uuid(message_id),
        _uuid(conversation_id),
        _uuid(message_id),
        _uuid(conversation_id),
        content,
        status,
        _uuid(user_message_id),
        input_tokens,
        output_tokens,
        error,
        _when(now),
        _day(day),
        tokens,
        _day(day),
        tokens,
        owner_id,
        persona_slug,
    ]
    moved, inserted = yield Statement(sql, params)
    return SavedRow(moved=bool(moved), inserted=bool(inserted))


def reply_row(message_id: uuid.UUID) -> Steps[ReplyInfo]:
    """A reply as it was saved."""
    row = yield Statement(
        f"SELECT content, status, error, input_tokens, output_tokens FROM {_table(Message)} "
        "WHERE id = %s",
        [_uuid(message_id)],
    )
    content, status, error, input_tokens, output_tokens = row
    return ReplyInfo(
        message_id=message_id,
        content=content,
        status=status,
        error=error,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
