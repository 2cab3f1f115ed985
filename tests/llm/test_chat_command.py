"""manage.py chat: a terminal chat through the same turn as the socket, against real SDKs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection

from conversations.models import Conversation, Message
from conversations.replies import replylog
from tests.llm.turn_servers import TITLE, TurnServer
from tests.llm.wire_servers import Script, load_events

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED = "Arr, the treasure lies buried on Skull Island."
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def openai_turns(limits: Any) -> Iterator[TurnServer]:
    server = TurnServer.openai()
    server.start()
    limits.LLM_PROVIDER = "openai"
    limits.OPENAI_API_KEY = "test-key"
    limits.OPENAI_BASE_URL = f"{server.base_url}/v1"
    limits.OPENAI_MODEL = "gpt-4o-mini"
    server.script = Script(events=load_events("openai_stream_ok.json"), event_pause=0.1)
    yield server
    server.stop()


class Terminal(io.StringIO):
    """Standard output that remembers what was on screen at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.screens: list[str] = []

    def flush(self) -> None:
        self.screens.append(self.getvalue())
        super().flush()


def chat(*args: str, stdin: str | None = None) -> tuple[str, str]:
    out, err = Terminal(), io.StringIO()
    extra: dict[str, Any] = {} if stdin is None else {"stdin": io.StringIO(stdin)}
    call_command("chat", *args, stdout=out, stderr=err, **extra)
    return out.getvalue(), err.getvalue()


def messages(owner: Any) -> list[tuple[str, str, str]]:
    return list(
        Message.objects.filter(conversation__owner=owner)
        .order_by("created_at")
        .values_list("role", "status", "content")
    )


def test_one_message_streams_the_reply_and_saves_it(openai_turns, alice, persona):
    out, _ = chat(
        "--persona", "assistant", "--message", "Where is the treasure?", "--user", "alice"
    )

    conversation = Conversation.objects.get(owner=alice)
    assert out.splitlines() == [
        f"Assistant (openai, gpt-4o-mini) in conversation {conversation.id}",
        EXPECTED,
        "[complete, 31 tokens in, 9 out]",
        f"title: {TITLE}",
        f"chat: 1 turn, conversation {conversation.id}",
    ]
    assert messages(alice) == [
        ("user", "complete", "Where is the treasure?"),
        ("assistant", "complete", EXPECTED),
    ]
    reply = Message.objects.get(role="assistant")
    assert (reply.input_tokens, reply.output_tokens) == (31, 9)
    assert conversation.title == TITLE


def test_tokens_are_printed_as_they_arrive(openai_turns, alice, persona):
    out = Terminal()

    call_command("chat", "--persona", "assistant", "--message", "Hi", "--user", "alice", stdout=out)

    header = out.getvalue().splitlines()[0] + "\n"
    screens = [s.removeprefix(header) for s in out.screens if s.startswith(header)]
    assert [s for s in screens if s and not s.endswith("\n")][:3] == [
        "Arr, the treasure",
        "Arr, the treasure lies buried",
        EXPECTED,
    ]


def test_misconfigured_provider_exits_non_zero_with_the_message(alice, persona, settings):
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""

    with pytest.raises(CommandError, match="OpenAI needs an API key: set OPENAI_API_KEY") as failed:
        chat("--persona", "assistant", "--message", "Hi", "--user", "alice")

    assert failed.value.returncode == 1
    assert Conversation.objects.count() == 0
    assert Message.objects.count() == 0


def _database_url() -> str:
    db = django_settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = f"{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
    return f"postgres://{db.get('USER') or 'postgres'}{password}@{host}/{db['NAME']}"


def shell_env(**overrides: str) -> dict[str, str]:
    """The environment for `manage.py chat` in a process of its own, on the test database."""
    if connection.vendor != "postgresql":
        pytest.skip("the command's own process needs a database it can share")
    return {**os.environ, "DATABASE_URL": _database_url(), "DJANGO_DEBUG": "true", **overrides}


def test_misconfigured_provider_from_the_shell_prints_the_message_and_exits_1(alice, persona):
    env = shell_env(LLM_PROVIDER="gemini", GEMINI_API_KEY="")

    command = ["chat", "--persona", "assistant", "--message", "Hi", "--user", "alice"]
    finished = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1
    assert "Gemini needs an API key: set GEMINI_API_KEY" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert Message.objects.count() == 0


def test_a_rejected_key_fails_the_reply_and_exits_non_zero(openai_turns, alice, persona, settings):
    settings.OPENAI_API_KEY = "wrong-key"

    with pytest.raises(CommandError, match=r"rejected the API key \(HTTP 401\); ask an admin"):
        chat("--persona", "assistant", "--message", "Hi", "--user", "alice")

    assert messages(alice)[1][:2] == ("assistant", "error")


def test_unknown_persona_is_a_clear_error(alice, persona):
    with pytest.raises(CommandError, match="No persona 'nobody'"):
        chat("--persona", "nobody", "--message", "Hi", "--user", "alice")

    assert Message.objects.count() == 0


def test_unknown_user_is_a_clear_error(persona):
    with pytest.raises(CommandError, match="No active user 'carol'"):
        chat("--persona", "assistant", "--message", "Hi", "--user", "carol")


def test_without_a_superuser_it_asks_for_a_user(alice, persona):
    with pytest.raises(CommandError, match="pass --user USERNAME"):
        chat("--persona", "assistant", "--message", "Hi")


def test_the_first_superuser_is_the_default(alice, persona, fast_demo):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "x" * 20)
    get_user_model().objects.create_superuser("later", "later@example.com", "x" * 20)

    chat("--persona", "assistant", "--message", "Hi")

    assert Conversation.objects.get().owner == root


def test_lines_from_stdin_are_turns_of_one_conversation(alice, persona, fast_demo):
    out, _ = chat(
        "--persona", "assistant", "--user", "alice", stdin="First question\nSecond one\n\nIgnored\n"
    )

    conversation = Conversation.objects.get(owner=alice)
    assert [(role, content[:30]) for role, _, content in messages(alice)][::2] == [
        ("user", "First question"),
        ("user", "Second one"),
    ]
    assert [status for _, status, _ in messages(alice)] == ["complete"] * 4
    assert 'You asked: "Second one"' in out
    assert out.splitlines()[-1] == f"chat: 2 turns, conversation {conversation.id}"


def test_a_message_over_the_limit_is_refused_and_the_chat_goes_on(alice, persona, fast_demo):
    too_long = "x" * (fast_demo.MAX_MESSAGE_CHARS + 1)

    out, err = chat("--persona", "assistant", "--user", "alice", stdin=f"{too_long}\nHello\n")

    assert f"Messages are limited to {fast_demo.MAX_MESSAGE_CHARS} characters." in err
    assert [content for role, _, content in messages(alice) if role == "user"] == ["Hello"]
    assert out.splitlines()[-1].startswith("chat: 1 turn, conversation ")


def test_end_of_input_at_once_is_zero_turns(alice, persona):
    out, _ = chat("--persona", "assistant", "--user", "alice", stdin="")

    assert out.splitlines() == ["chat: 0 turns"]
    assert Conversation.objects.count() == 0


class Screen:
    """What a process has printed so far, read as it arrives."""

    def __init__(self, stream: Any) -> None:
        self.text = ""
        self._stream = stream
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while chunk := self._stream.read1(4096):
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()

    def wait_for(self, needle: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.text.count(needle) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"never saw {needle!r} x{count} in:\n{self.text}"
                self._changed.wait(left)


def test_ctrl_c_stops_each_reply_and_the_chat_goes_on(alice, persona):
    env = shell_env(LLM_PROVIDER="demo", DEMO_TOKEN_DELAY_MS="20", DEMO_REPLY_WORDS="1000")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "chat", "--persona", "assistant", "--user", "alice"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    screen = Screen(process.stdout)
    try:
        for turn, question in enumerate(["First question", "Second question"], start=1):
            process.stdin.write(f"{question}\n".encode())
            process.stdin.flush()
            screen.wait_for(f'You asked: "{question}"')
            process.send_signal(signal.SIGINT)
            screen.wait_for("[stopped", count=turn)
        process.stdin.close()
        assert process.wait(20) == 0
    finally:
        process.kill()

    replies = [
        (status, content) for role, status, content in messages(alice) if role == "assistant"
    ]
    assert [status for status, _ in replies] == ["stopped", "stopped"]
    assert all(0 < len(content.split()) < 1000 for _, content in replies)
    assert "chat: 2 turns, conversation " in screen.text


@pytest.fixture
def reply_log(settings: Any) -> Iterator[str]:
    """The reply log in a Redis database of its own, with a heartbeat that lapses in 1 s."""
    url = os.environ.get("TEST_REPLY_LOG_URL", "redis://127.0.0.1:6379/13")
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings.REDIS_URL = url
    settings.HEARTBEAT_SECONDS = 0.2
    settings.HEARTBEAT_TTL = 1
    yield url
    client.flushdb()
    # replylog keeps one client per event loop; these loops are gone.
    replylog._clients.clear()


def test_a_long_reply_keeps_its_heartbeat(reply_log, alice, persona, fast_demo):
    """Other workers must not save the terminal's reply as a dead worker's."""
    import asyncio

    from conversations.replies.recovery import recover_orphans

    fast_demo.DEMO_TOKEN_DELAY_MS = 20
    fast_demo.DEMO_REPLY_WORDS = 120  # about 2.5 s, past the heartbeat's lifetime
    recovered: list[Any] = []

    def other_worker() -> None:
        time.sleep(1.8)
        recovered.extend(asyncio.run(recover_orphans()))

    watcher = threading.Thread(target=other_worker)
    watcher.start()
    chat("--persona", "assistant", "--message", "Take your time", "--user", "alice")
    watcher.join(10)

    assert recovered == []
    reply = Message.objects.get(role="assistant")
    assert (reply.status, len(reply.content.split())) == ("complete", 120)
