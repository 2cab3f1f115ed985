"""The maintenance commands against the real PostgreSQL: what they delete, write and flag."""

from __future__ import annotations

import io
import math
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from chatproject.ops.db_report import Thresholds, db_report
from conversations.export import export_lines
from conversations.maintenance import parse_age
from conversations.models import Conversation, Message
from conversations.services import message_append
from tests.conftest import admin_dsn

pytestmark = pytest.mark.django_db


def conversation(owner: Any, persona: Any, *, days_old: float, title: str = "", n: int = 2) -> Any:
    chat = Conversation.objects.create(owner=owner, persona=persona, title=title)
    for i in range(n):
        if i % 2 == 0:
            message_append(
                conversation=chat, role=Message.Role.USER, content=f"question {i} of {title}"
            )
        else:
            message_append(
                conversation=chat, role=Message.Role.ASSISTANT, content=f"answer {i} of {title}"
            )
    # updated_at is auto_now: age the row with an update, as time would.
    Conversation.objects.filter(pk=chat.pk).update(
        updated_at=timezone.now() - timedelta(days=days_old)
    )
    return chat


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as failed:
        failed.add_note(out.getvalue())  # the report, shown when a test fails
        raise
    return out.getvalue(), err.getvalue()


# --- prune_conversations ----------------------------------------------------------------


def test_prune_dry_run_deletes_nothing_and_says_what_it_would(alice, bob, persona):
    for i in range(3):
        conversation(alice, persona, days_old=100, title=f"old {i}")
    conversation(alice, persona, days_old=1, title="new")

    out, _ = run("prune_conversations", "--older-than", "90d", "--dry-run")

    assert out.strip().splitlines()[0] == (
        "prune_conversations: dry run, would delete 3 conversation(s) and 6 message(s) "
        "older than 90d"
    )
    assert Conversation.objects.count() == 4
    assert Message.objects.count() == 8


def test_prune_deletes_exactly_the_old_rows_in_batches(alice, bob, persona):
    old = {conversation(alice, persona, days_old=91 + i, title=f"old {i}").pk for i in range(5)}
    recent = conversation(alice, persona, days_old=89, title="recent")
    bobs_old = conversation(bob, persona, days_old=200, title="bob's old")
    kept = {recent.pk, bobs_old.pk}
    kept_messages = set(Message.objects.filter(conversation__in=kept).values_list("pk", flat=True))

    out, err = run(
        "prune_conversations", "--older-than", "90d", "--user", "alice", "--batch-size", "2"
    )

    assert out.strip().splitlines()[0] == (
        "prune_conversations: deleted 5 conversation(s) of alice and 10 message(s) older than 90d"
    )
    assert set(Conversation.objects.values_list("pk", flat=True)) == kept
    assert set(Message.objects.values_list("pk", flat=True)) == kept_messages
    assert not Conversation.objects.filter(pk__in=old).exists()
    # Progress on stderr, one line per batch of two when it is not a terminal.
    bars = [line for line in err.splitlines() if line.startswith("[")]
    assert bars[-1].endswith("5/5 conversations deleted")
    assert len(bars) == 3


def test_prune_refuses_an_unknown_user_and_a_bad_age(alice, persona):
    with pytest.raises(CommandError, match="No user 'carol'"):
        run("prune_conversations", "--older-than", "90d", "--user", "carol")
    with pytest.raises(CommandError, match="Cannot read"):
        run("prune_conversations", "--older-than", "ninety days")
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    assert parse_age("30") == timedelta(days=30)


# --- export_conversations ---------------------------------------------------------------


def test_export_jsonl_round_trips_to_what_the_database_holds(alice, bob, persona, tmp_path):
    tricky = 'Line one\nline "two" — ünïcode 🏴‍☠️ <b>not html</b>\n\n```py\nprint(1)\n```'
    chats = [conversation(alice, persona, days_old=i, title=f"chat {i}", n=3) for i in range(5)]
    Message.objects.filter(conversation=chats[0], role="user").update(content=tricky)
    conversation(bob, persona, days_old=0, title="bob's")
    output = tmp_path / "alice.jsonl"

    with CaptureQueriesContext(connection) as queries:
        out, _ = run(
            "export_conversations", "--user", "alice", "--output", str(output), "--chunk-size", "2"
        )

    assert out.strip() == f"export_conversations: 5 conversation(s) as jsonl to {output}"
    exported = list(export_lines(output.open(encoding="utf-8")))
    expected = []
    for chat in Conversation.objects.filter(owner=alice).order_by("created_at", "id"):
        expected.append(
            {
                "id": str(chat.id),
                "title": chat.title,
                "owner": "alice",
                "persona": persona.slug,
                "persona_name": persona.name,
                "created_at": chat.created_at.isoformat(),
                "updated_at": chat.updated_at.isoformat(),
                "current_leaf_id": str(chat.current_leaf_id),
                "messages": [
                    {
                        "id": str(m.id),
                        "role": m.role,
                        "content": m.content,
                        "status": m.status,
                        "created_at": m.created_at.isoformat(),
                        "error": m.error or None,
                        "parent_id": str(m.parent_id) if m.parent_id else None,
                        "feedback": None,
                        "usage": None,
                        "attachments": [],
                    }
                    for m in chat.messages.order_by("created_at")
                ],
            }
        )
    assert exported == expected
    assert exported[0]["messages"][0]["content"] == tricky
    # Streamed: the messages were fetched chunk by chunk (5 conversations, 2 per chunk).
    message_queries = [q for q in queries if 'FROM "conversations_message"' in q["sql"]]
    assert len(message_queries) == math.ceil(5 / 2)


def test_export_markdown_to_stdout(alice, persona):
    conversation(alice, persona, days_old=0, title="Markdown please", n=2)
    out, err = run("export_conversations", "--format", "md")
    assert out.startswith("# Markdown please\n")
    assert "question 0 of Markdown please" in out
    assert "answer 1 of Markdown please" in out
    assert "User: alice" in out
    assert "export_conversations: 1 conversation(s) as md to stdout" in err


# --- db_report --------------------------------------------------------------------------


def _test_db_dsn() -> str:
    return make_conninfo(admin_dsn(), dbname=connection.settings_dict["NAME"])


def test_db_report_flags_a_connection_left_idle_in_transaction(db):
    # The leak this project was born from: a connection that began a transaction and then
    # sat there, holding its snapshot and locks.
    with psycopg.connect(_test_db_dsn(), application_name="leaky-test") as leaky:
        leaky.execute("SELECT 1")  # psycopg opens a transaction (BEGIN) before this
        pid = leaky.info.backend_pid
        time.sleep(0.4)

        with pytest.raises(CommandError) as failed:
            run(
                "db_report",
                "--max-idle-in-transaction",
                "0.3",
                "--max-connections-ratio",
                "0.99",
            )
        assert failed.value.returncode == 1
        assert str(failed.value) == "db_report: 1 problem(s) found"

        report = db_report(
            thresholds=Thresholds(idle_in_transaction_seconds=0.3, backends_ratio=0.99)
        )
        assert [b.pid for b in report.idle_in_transaction] == [pid]
        assert report.states.get("idle in transaction") == 1
        assert report.longest is not None and report.longest.pid == pid
        assert len(report.problems) == 1
        assert report.problems[0].startswith(f"pid {pid} (leaky-test) has been idle in transaction")
        leaky.rollback()

    out, _ = run("db_report", "--max-idle-in-transaction", "0.3", "--max-connections-ratio", "0.99")
    assert "idle in transaction: 0" in out
    assert out.strip().splitlines()[-1].startswith("db_report: OK")


def test_db_report_prints_what_it_read(db):
    out, _ = run("db_report", "--max-connections-ratio", "0.99")
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"database {connection.settings_dict['NAME']}: ")
    assert lines[1].startswith("server: ")
    assert "max_connections=" in lines[1]
    assert any(line.startswith("longest open transaction:") for line in lines)
    assert lines[-1].startswith("db_report: OK")


def test_db_report_flags_too_many_connections(db):
    report = db_report(thresholds=Thresholds(backends_ratio=0.0001))
    assert not report.ok
    assert "of max_connections=" in report.problems[-1]


def test_db_report_flags_an_exhausted_pool(db):
    # A real psycopg pool of one connection, checked out, with a second request waiting.
    pool = ConnectionPool(_test_db_dsn(), min_size=1, max_size=1, open=True)
    try:
        held = pool.getconn()
        waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=10)))
        waiter.start()
        deadline = time.monotonic() + 5
        while pool.get_stats().get("requests_waiting", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)

        report = db_report(
            thresholds=Thresholds(backends_ratio=0.99), pools={"worker-1": pool.get_stats()}
        )

        assert report.problems == [
            "pool of worker-1: 1 request(s) waiting for a connection",
            "pool of worker-1: exhausted, all 1 connections checked out",
        ]
        pool.putconn(held)
        waiter.join(10)
        calm = db_report(
            thresholds=Thresholds(backends_ratio=0.99), pools={"worker-1": pool.get_stats()}
        )
        assert calm.ok, calm.problems
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        (
            "prune_conversations",
            ["--older-than AGE", "--user USERNAME", "--dry-run", "--upload-grace AGE"],
        ),
        ("export_conversations", ["--format {jsonl,md}", "--output FILE", "--user USERNAME"]),
        ("db_report", ["--worker URL", "--max-idle-in-transaction SECONDS"]),
    ],
)
def test_commands_explain_themselves(name: str, options: list[str]) -> None:
    command = load_command_class("conversations", name)
    text = " ".join(command.create_parser("manage.py", name).format_help().split())
    assert " ".join(str(command.help).split()) in text
    for option in options:
        assert option in text
