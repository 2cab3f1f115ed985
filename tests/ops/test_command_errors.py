"""The maintenance commands refusing what they cannot do: a clear message, no traceback, and
nothing of the admin's lost (an earlier export, a password, a file read by mistake)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import subprocess_database_url
from tests.ops.conftest import ROOT, free_port
from tests.ops.test_commands import conversation, run

pytestmark = pytest.mark.django_db

User = get_user_model()


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`manage.py` in a process of its own, as an admin runs it."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- export_conversations: the output file ----------------------------------------------


def test_a_refused_export_leaves_the_old_file_as_it_was(alice, persona, tmp_path):
    conversation(alice, persona, days_old=0, title="new")
    output = tmp_path / "export.jsonl"
    output.write_text("OLD\n")

    with pytest.raises(CommandError, match="No user 'nobody'"):
        run("export_conversations", "--user", "nobody", "-o", str(output))

    assert output.read_text() == "OLD\n"
    assert list(tmp_path.iterdir()) == [output]

    run("export_conversations", "--user", "alice", "-o", str(output))
    assert '"title": "new"' in output.read_text()
    assert list(tmp_path.iterdir()) == [output]


class CtrlC(io.StringIO):
    """A stderr on which the first progress line arrives as the admin presses Ctrl-C."""

    def write(self, text: str) -> int:
        if text.startswith("["):
            raise KeyboardInterrupt
        return super().write(text)


def test_an_interrupted_export_leaves_no_partial_file(alice, persona, tmp_path):
    for i in range(3):
        conversation(alice, persona, days_old=i, title=f"chat {i}")
    output = tmp_path / "export.jsonl"
    output.write_text("OLD\n")
    fresh = tmp_path / "fresh.jsonl"

    for target in (output, fresh):
        with pytest.raises(KeyboardInterrupt):
            call_command(
                "export_conversations", "-o", str(target), "--chunk-size", "1",
                stdout=io.StringIO(), stderr=CtrlC(),
            )  # fmt: skip

    assert output.read_text() == "OLD\n"
    assert not fresh.exists()
    assert list(tmp_path.iterdir()) == [output]


@pytest.mark.parametrize("where", ["missing/dir/x.jsonl", "a-directory", "a-file/x.jsonl"])
def test_an_export_to_a_path_it_cannot_write_says_which(alice, tmp_path, where):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    target = tmp_path / where

    with pytest.raises(CommandError, match="Cannot write") as refused:
        run("export_conversations", "-o", str(target))

    assert str(target) in str(refused.value)
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


@pytest.mark.django_db(transaction=True)
def test_an_export_piped_into_head_ends_without_a_traceback(alice, persona):
    for i in range(3):
        conversation(alice, persona, days_old=i, title=f"chat {i}", n=4)
    export = subprocess.Popen(
        [sys.executable, "manage.py", "export_conversations", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": subprocess_database_url()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert export.stdout is not None and export.stderr is not None
    export.stdout.close()  # `| head -0`: the reader is gone before the first line
    errors = export.stderr.read()
    export.wait(60)

    assert "Traceback" not in errors
    assert "Exception ignored" not in errors
    assert export.returncode in (0, 1), errors


# --- ages -------------------------------------------------------------------------------


@pytest.mark.parametrize("age", ["99999999999d", "999999999w", "3000000d", "36600d"])
@pytest.mark.parametrize(
    "command",
    [
        ["prune_conversations", "--older-than"],
        ["prune_conversations", "--older-than", "90d", "--upload-grace"],
        ["recover_streams", "--older-than"],
    ],
)
def test_an_age_beyond_a_century_is_refused(command: list[str], age: str) -> None:
    with pytest.raises(CommandError, match="more than 100 years"):
        run(*command, age)


# --- usage_report --top -----------------------------------------------------------------


@pytest.mark.parametrize("top", ["-1", "0", "10001", "99999999999999999999"])
def test_usage_report_refuses_a_top_out_of_range(top: str) -> None:
    with pytest.raises(CommandError, match="--top must be between 1 and 10000"):
        run("usage_report", "--top", top)


def test_usage_report_takes_the_largest_top(alice) -> None:
    out, _ = run("usage_report", "--top", "10000")
    assert out.startswith("Token usage this day")


# --- db_report --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["notaurl", "file:///etc/passwd", "ftp://127.0.0.1/metrics"])
def test_db_report_reads_workers_over_http_only(url: str) -> None:
    with pytest.raises(CommandError) as refused:
        run("db_report", "--max-connections-ratio", "0.99", "--worker", url)

    assert refused.value.returncode == 2
    assert "http:// or https://" in str(refused.value)
    assert "root:" not in str(refused.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-connections-ratio", "-1"),
        ("--max-connections-ratio", "0"),
        ("--max-connections-ratio", "1.5"),
        ("--max-connections-ratio", "nan"),
        ("--max-idle-in-transaction", "-5"),
        ("--max-idle-in-transaction", "inf"),
        ("--max-transaction-age", "0"),
        ("--max-transaction-age", "-300"),
    ],
)
def test_db_report_refuses_a_threshold_that_would_never_or_always_flag(option, value):
    with pytest.raises(CommandError, match=f"{option} must be") as refused:
        run("db_report", option, value)
    assert refused.value.returncode == 2


# --- the database unreachable -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["export_conversations"],
        ["usage_report"],
        ["prune_conversations", "--older-than", "90d"],
        ["recover_streams", "--older-than", "1h"],
        ["create_demo_user"],
    ],
)
def test_a_database_that_is_down_is_said_plainly(command: list[str]) -> None:
    down = f"postgres://postgres@127.0.0.1:{free_port()}/chat"
    done = manage(*command, DATABASE_URL=down, DB_POOL_TIMEOUT="1", REDIS_URL="")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert f"CommandError: {command[0]}: cannot read the database: " in done.stderr


# --- create_demo_user -------------------------------------------------------------------


@pytest.fixture
def debug(settings: Any) -> None:
    settings.DEBUG = True


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (["--username", "d" * 300], "at most 150 characters"),
        (["--username", "bad user!<x>"], "Enter a valid username"),
        (["--username", ""], "username"),
        (["--username", "fine", "--password", ""], "password"),
    ],
)
def test_create_demo_user_refuses_a_bad_username_or_an_empty_password(debug, options, refusal):
    with pytest.raises(CommandError, match=refusal):
        run("create_demo_user", *options)
    assert not User.objects.exists()


def test_create_demo_user_leaves_an_existing_password_and_says_so(debug):
    out, _ = run("create_demo_user", "--password", "first-secret-1")
    assert "create_demo_user: created;" in out
    assert out.strip().endswith("as demo / first-secret-1")

    out, _ = run("create_demo_user", "--password", "second-secret-2")
    assert "already exists" in out
    assert "its password was left as it was" in out
    assert "second-secret-2" not in out
    assert User.objects.get(username="demo").check_password("first-secret-1")

    # The same password again (`make run` twice): the login line is still true.
    out, _ = run("create_demo_user", "--password", "first-secret-1")
    assert "already exists" in out
    assert out.strip().endswith("as demo / first-secret-1")
