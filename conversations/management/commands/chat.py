"""manage.py chat: talk to a persona from the terminal through the very turn the socket runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from conversations.context import TurnContext
from conversations.db import db_call
from conversations.errors import ChatError, Invalid, TooLarge
from conversations.replies import worker
from conversations.replies.protocol import Frame, Send, parse_frame
from conversations.replies.registry import registry
from conversations.replies.reply import Reply
from conversations.replies.start import turn_start

PROMPT = "you> "


def user_for_chat(username: str | None) -> int:
    """The id of the user to chat as: `username`, or else the first superuser."""
    users = get_user_model().objects.filter(is_active=True)
    if username:
        found = users.filter(username=username).values_list("pk", flat=True).first()
        if found is None:
            raise CommandError(f"No active user {username!r}.")
        return int(found)
    first = users.filter(is_superuser=True).order_by("pk").values_list("pk", flat=True).first()
    if first is None:
        raise CommandError(
            "There is no superuser to chat as: pass --user USERNAME "
            "(or create one with manage.py createsuperuser)."
        )
    return int(first)


@dataclass
class Outcome:
    status: str = ""
    error: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def failed(self) -> bool:
        return self.status == "error"

    def summary(self) -> str:
        if self.error:
            return f"[{self.status}: {self.error}]"
        tokens = f"{_count(self.input_tokens)} tokens in, {_count(self.output_tokens)} out"
        return f"[{self.status}, {tokens}]"


@dataclass
class Tally:
    turns: int = 0
    failed: int = 0
    last_error: str = ""


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _uncancel() -> None:
    """Carry on after asyncio.run's Ctrl-C cancellation was handled."""
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()


class _Interrupts:
    """Every Ctrl-C cancels what the session awaits; asyncio.run's own handler only does that
    once and raises KeyboardInterrupt the second time."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_signal_handler(signal.SIGINT)


def _catch_interrupts() -> _Interrupts:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    if main is None:
        return _Interrupts(None)
    try:
        loop.add_signal_handler(signal.SIGINT, main.cancel)
    except (NotImplementedError, RuntimeError, ValueError):
        return _Interrupts(None)  # not the main thread: asyncio.run's handler applies
    return _Interrupts(loop)


def _model_of(ctx: TurnContext, provider: str) -> str:
    defaults = {"openai": settings.OPENAI_MODEL, "gemini": settings.GEMINI_MODEL}
    return ctx.persona.model or defaults.get(provider, "")


class Command(BaseCommand):
    help = (
        "Chat with a persona in the terminal, through the same turn as the web chat: "
        "replies stream as they arrive and are saved. With --message, one turn; otherwise "
        "one turn per line read until an empty line or end of input (Ctrl-C stops a reply). "
        "Exits non-zero when the provider is misconfigured or a reply fails, so it checks a "
        "key or a model."
    )
    # The turn reports a misconfigured provider for the persona asked for, with the same
    # message; the startup check about the default provider must not block a working persona.
    requires_system_checks: list[str] = []
    # `stdin` lets tests feed the interactive loop through call_command.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--persona", required=True, metavar="SLUG", help="Slug of the persona to talk to."
        )
        parser.add_argument(
            "--user", dest="username", help="Chat as this user (default: the first superuser)."
        )
        parser.add_argument("--message", metavar="TEXT", help="Send this one message and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.persona: str = options["persona"]
        self.conversation_id: uuid.UUID | None = None
        tally = Tally()
        # One event loop for the whole session: the turn's clients (Redis, the channel layer)
        # belong to the loop that made them.
        session = self._session(
            tally, options["username"], options["message"], options.get("stdin") or sys.stdin
        )
        try:
            asyncio.run(session)
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.stderr.write("\ninterrupted")
        where = f", conversation {self.conversation_id}" if self.conversation_id else ""
        self.stdout.write(f"chat: {tally.turns} turn{'' if tally.turns == 1 else 's'}{where}")
        if tally.failed:
            raise CommandError(
                f"{tally.failed} of {tally.turns} replies failed: {tally.last_error}"
                if tally.turns > 1
                else f"The reply failed: {tally.last_error}"
            )

    async def _session(
        self, tally: Tally, username: str | None, one_shot: str | None, stdin: TextIO
    ) -> None:
        user_id = await db_call(user_for_chat)(username)
        # As a socket does: heartbeats keep other workers from saving our reply as orphaned.
        worker.ensure_started()
        interrupts = _catch_interrupts()
        try:
            while True:
                text = one_shot if one_shot is not None else await self._read(stdin)
                if text is None or (one_shot is None and not text):
                    break
                try:
                    outcome = await self._turn(user_id, text)
                except (Invalid, TooLarge) as error:
                    if one_shot is not None:
                        raise CommandError(error.message) from None
                    self.stderr.write(error.message)  # a typing mistake: let them try again
                    continue
                except ChatError as error:
                    # The operator at the console is told what users are not: the detail.
                    raise CommandError(error.detail or error.message) from None
                except DatabaseError as error:
                    raise CommandError(f"The database could not be reached: {error}") from None
                except asyncio.CancelledError:
                    _uncancel()  # Ctrl-C before the reply began
                    self.stderr.write("\ninterrupted")
                    break
                tally.turns += 1
                if outcome.failed:
                    tally.failed += 1
                    tally.last_error = outcome.error
                if one_shot is not None:
                    break
        finally:
            interrupts.close()
            await worker.stop()

    async def _read(self, stdin: TextIO) -> str | None:
        """The next line, stripped; None at the end of input (Ctrl-D) or on Ctrl-C."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str | None] = loop.create_future()
        interactive = stdin is sys.stdin and stdin.isatty()

        def deliver(value: str | None) -> None:
            if not line.done():
                line.set_result(value)

        def read() -> None:
            try:
                text: str | None = input(PROMPT) if interactive else stdin.readline() or None
            except (EOFError, OSError, ValueError):
                text = None
            # The loop may be gone already (Ctrl-C at the prompt).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, text)

        # A daemon thread, not the loop's executor: on Ctrl-C the session ends at once
        # instead of waiting for a line that never comes.
        threading.Thread(target=read, name="chat-stdin", daemon=True).start()
        try:
            text = await line
        except asyncio.CancelledError:
            _uncancel()
            self.stdout.write("")
            return None
        return text.strip() if text is not None else None

    def _command(self, text: str) -> Send:
        # Through the socket's own parser: the same limits and the same refusals.
        frame = {
            "type": "chat.send",
            "conversation_id": str(self.conversation_id) if self.conversation_id else None,
            "persona": None if self.conversation_id else self.persona,
            "content": text,
            "client_id": str(uuid.uuid4()),
        }
        command = parse_frame(json.dumps(frame))
        assert isinstance(command, Send)
        return command

    async def _turn(self, user_id: int, text: str) -> Outcome:
        command = self._command(text)
        side_work = set(registry.side_tasks)
        started = await turn_start(user_id=user_id, command=command)
        titles = registry.side_tasks - side_work
        ctx = started.ctx
        if self.conversation_id is None:
            self.conversation_id = ctx.conversation_id
            provider = ctx.persona.provider or settings.LLM_PROVIDER
            model = _model_of(ctx, provider)
            self.stdout.write(
                f"{ctx.persona.name} ({provider}{f', {model}' if model else ''}) "
                f"in conversation {ctx.conversation_id}"
            )
        outcome = await self._follow(started.reply)
        self.stdout.write(outcome.summary())
        if titles:
            await self._await_title(titles)
        return outcome

    async def _follow(self, reply: Reply) -> Outcome:
        outcome = Outcome()
        printed = finished = False

        def show(frame: Frame) -> bool:
            nonlocal printed, finished
            kind = frame["type"]
            finished = finished or kind in {"chat.done", "chat.error"}
            if kind == "chat.delta":
                self.stdout.write(frame["text"], ending="")
                self.stdout.flush()
                printed = True
            elif kind == "chat.done":
                if not printed:  # a reply saved before: no deltas, the whole text at once
                    self.stdout.write(frame["content"], ending="")
                    printed = bool(frame["content"])
                usage = frame["usage"]
                outcome.status = frame["status"]
                outcome.error = frame["error"] or ""
                outcome.input_tokens = usage["input_tokens"]
                outcome.output_tokens = usage["output_tokens"]
            elif kind == "chat.error":
                outcome.status, outcome.error = "error", frame["message"]
            return True

        key = f"cli.{uuid.uuid4().hex}"
        reply.follow(key, show, 0)
        try:
            final = await reply.final()
        except asyncio.CancelledError:
            # Ctrl-C while a reply streams works like chat.stop: the text so far is saved.
            await reply.stop()
            final = await reply.final()
            _uncancel()
        reply.unfollow(key)
        if not finished:  # followed through another worker's log: the end came this way
            show(final)
        if printed:
            self.stdout.write("")  # end the reply's last line
        return outcome

    async def _await_title(self, titles: set[asyncio.Task[Any]]) -> None:
        # Naming the conversation runs beside the reply; wait, so the title is shown and
        # nothing is cancelled when the session ends.
        try:
            results = await asyncio.gather(*titles, return_exceptions=True)
        except asyncio.CancelledError:
            _uncancel()  # Ctrl-C: the heuristic title stays
            return
        for title in results:
            if isinstance(title, str):
                self.stdout.write(f"title: {title}")
