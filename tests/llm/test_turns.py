"""Whole turns with real models: the WebSocket stack, the chat core and the real SDKs, against
local servers that speak the Gemini and OpenAI wire formats."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection, transaction
from google.genai import types
from openai.types.chat import ChatCompletionChunk

from accounts.models import Profile
from conversations.db import db_call
from conversations.llm.base import PUBLIC_CONFIGURATION_ERROR
from conversations.models import Conversation, Message
from conversations.replies import start
from conversations.replies.generation import ModelStream
from conversations.replies.registry import registry
from conversations.services import message_append
from conversations.titles import TITLE_INSTRUCTION
from personas.models import Persona
from tests.conftest import Socket
from tests.llm.turn_servers import (
    TITLE,
    TurnServer,
    conversation_of,
    gemini_text_events,
    openai_text_events,
    system_text,
)
from tests.llm.wire_servers import Script, load_events
from tests.locks import waiting_on_a_lock

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

EXPECTED = "Arr, the treasure lies buried on Skull Island."
QUESTION = "Where is the treasure?"


@dataclass
class Upstream:
    """One provider's local server and what its example streams hold."""

    name: str
    server: TurnServer
    ok: str  # example stream of a normal reply
    first_text: int  # index of the first event that carries text
    usage: tuple[int, int]
    filtered: str  # example stream stopped by a filter after some text
    filtered_text: str
    filtered_error: str
    key_setting: str

    def reply(self, **script: Any) -> None:
        """Answer replies with the normal example stream, paced so deltas arrive one by one."""
        script.setdefault("event_pause", 0.1)
        self.server.script = Script(events=load_events(self.ok), **script)


@pytest.fixture
def openai_turns(limits: Any) -> Iterator[TurnServer]:
    server = TurnServer.openai()
    server.start()
    limits.OPENAI_API_KEY = "test-key"
    limits.OPENAI_BASE_URL = f"{server.base_url}/v1"
    limits.OPENAI_MODEL = "gpt-4o-mini"
    yield server
    server.stop()


@pytest.fixture
def gemini_turns(limits: Any) -> Iterator[TurnServer]:
    server = TurnServer.gemini()
    server.start()
    limits.GEMINI_API_KEY = "test-key"
    limits.GEMINI_BASE_URL = server.base_url
    limits.GEMINI_MODEL = "gemini-2.5-flash"
    yield server
    server.stop()


@pytest.fixture(params=["openai", "gemini"])
def upstream(request: pytest.FixtureRequest, limits: Any) -> Upstream:
    """The default provider (`LLM_PROVIDER`) switched to a real one on a local server."""
    limits.LLM_PROVIDER = request.param
    server: TurnServer = request.getfixturevalue(f"{request.param}_turns")
    if request.param == "openai":
        return Upstream(
            name="openai",
            server=server,
            ok="openai_stream_ok.json",
            first_text=1,
            usage=(31, 9),
            filtered="openai_content_filter.json",
            filtered_text="Arr, I'll tell ye how",
            filtered_error="The model declined to answer (content filter).",
            key_setting="OPENAI_API_KEY",
        )
    return Upstream(
        name="gemini",
        server=server,
        ok="gemini_stream_ok.json",
        first_text=0,
        usage=(24, 11),
        filtered="gemini_safety_block.json",
        filtered_text="Arr, I'll tell ye how",
        filtered_error="The model declined to answer (safety filter: SAFETY).",
        key_setting="GEMINI_API_KEY",
    )


def reply_row(message_id: str) -> tuple[str, str, str, int | None, int | None]:
    reply = Message.objects.get(id=message_id)
    return reply.status, reply.content, reply.error, reply.input_tokens, reply.output_tokens


def counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


def existing_conversation(owner: Any, persona: Persona, *texts: str) -> str:
    """A conversation that already exists, so a turn in it makes no title call."""
    made = Conversation.objects.create(owner=owner, persona=persona, title="Treasure hunt")
    for index, text in enumerate(texts):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        message_append(conversation=made, role=role, content=text)
    return str(made.id)


def title_of(conversation_id: str) -> str:
    return Conversation.objects.get(id=conversation_id).title


async def side_work_done() -> None:
    """Title calls run beside the reply; wait for them before looking at their outcome."""
    if registry.side_tasks:
        await asyncio.wait_for(asyncio.gather(*registry.side_tasks), 30)


def split(frames: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    deltas = [f["text"] for f in frames if f["type"] == "chat.delta"]
    return accepted, deltas, frames[-1]


# --- a normal reply -----------------------------------------------------------------------


async def test_reply_streams_and_is_saved_with_the_usage_from_the_wire(
    upstream: Upstream, ws, alice, persona
):
    # Events far apart next to the 40 ms coalescing window, so each is its own frame even
    # when the machine is busy (at 0.1 s a loaded run merged two).
    upstream.reply(event_pause=0.3)
    socket = await ws(alice)

    await socket.send_message(QUESTION)
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    assert deltas == ["Arr, the treasure", " lies buried", " on Skull Island."]
    assert done["status"] == "complete"
    assert done["content"] == EXPECTED
    assert done["usage"] == {"input_tokens": upstream.usage[0], "output_tokens": upstream.usage[1]}
    assert done["error"] is None
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved == ("complete", EXPECTED, "", *upstream.usage)


async def test_the_model_hears_the_persona_the_profile_and_the_history(
    upstream: Upstream, ws, alice, persona
):
    upstream.reply(event_pause=0)
    await db_call(Profile.objects.filter(user=alice).update)(about="I sail a small boat.")
    conversation_id = await db_call(existing_conversation)(
        alice, persona, "Ahoy!", "Ahoy, Alice! How can I help?"
    )
    socket = await ws(alice)

    await socket.send_message(QUESTION, conversation_id=conversation_id)
    await socket.receive_until("chat.done")

    (sent,) = upstream.server.requests_for("reply")
    system = system_text(sent.body)
    assert system.startswith("You are a helpful assistant.")
    assert "The user's name is Alice." in system
    assert "I sail a small boat." in system
    assert conversation_of(sent.body) == [
        ("user", "Ahoy!"),
        ("assistant", "Ahoy, Alice! How can I help?"),
        ("user", QUESTION),
    ]


async def test_personas_with_different_providers_answer_in_one_process(
    openai_turns: TurnServer, gemini_turns: TurnServer, ws, alice, persona, pirate, fast_demo
):
    fast_demo.LLM_PROVIDER = "demo"
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    gemini_turns.script = Script(events=gemini_text_events("The stars say yes."))
    await db_call(Persona.objects.filter(slug="pirate").update)(provider="openai")
    await db_call(Persona.objects.create)(
        slug="oracle", name="Oracle", system_prompt="You see the future.", provider="gemini"
    )
    socket = await ws(alice)

    replies = {}
    for slug in ("pirate", "oracle", "assistant"):
        await socket.send_message(QUESTION, persona=slug)
        replies[slug] = (await socket.receive_until("chat.done"))[-1]["content"]

    assert replies["pirate"] == EXPECTED
    assert replies["oracle"] == "The stars say yes."
    assert replies["assistant"].startswith("Hello Alice! This is Assistant")
    assert len(openai_turns.requests_for("reply")) == 1
    assert len(gemini_turns.requests_for("reply")) == 1


# --- refusals and failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "setting"), [("openai", "OPENAI_API_KEY"), ("gemini", "GEMINI_API_KEY")]
)
async def test_missing_key_is_a_provider_error_that_saves_nothing(
    ws, alice, persona, settings, provider, setting
):
    settings.LLM_PROVIDER = "demo"
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.GEMINI_API_KEY = ""
    await db_call(Persona.objects.filter(slug="assistant").update)(provider=provider)
    conversation_id = await db_call(existing_conversation)(alice, persona, "Earlier", "Reply")
    socket = await ws(alice)

    client_id = await socket.send_message(QUESTION)
    refused_new = await socket.receive()
    await socket.send_message(QUESTION, conversation_id=conversation_id)
    refused_existing = await socket.receive()

    for error in (refused_new, refused_existing):
        assert (error["type"], error["code"]) == ("chat.error", "provider_error")
        assert error["message"] == PUBLIC_CONFIGURATION_ERROR
        assert setting not in error["message"]
        assert "Traceback" not in error["message"]
    assert refused_new["client_id"] == client_id
    assert await db_call(counts)() == (1, 2)
    assert await socket.nothing_pending()


async def test_wrong_key_ends_the_reply_with_a_helpful_error(
    openai_turns: TurnServer, ws, alice, persona, settings
):
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = "wrong-key"
    host = openai_turns.base_url.removeprefix("http://")
    socket = await ws(alice)

    await socket.send_message(QUESTION)
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    message = (
        f"The OpenAI-compatible server at {host} rejected the API key (HTTP 401); "
        "ask an administrator."
    )
    assert deltas == []
    assert (done["status"], done["content"], done["error"]) == ("error", "", message)
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:3] == ("error", "", message)


async def test_filter_mid_reply_keeps_the_partial_text_with_a_human_reason(
    upstream: Upstream, ws, alice, persona
):
    upstream.server.script = Script(events=load_events(upstream.filtered))
    socket = await ws(alice)

    await socket.send_message("How do I pick a lock?")
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    assert "".join(deltas) == upstream.filtered_text
    assert done["status"] == "error"
    assert done["content"] == upstream.filtered_text
    assert done["error"] == upstream.filtered_error
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:3] == ("error", upstream.filtered_text, upstream.filtered_error)


async def test_blocked_prompt_saves_an_empty_reply_with_the_reason(
    gemini_turns: TurnServer, ws, alice, persona, settings
):
    settings.LLM_PROVIDER = "gemini"
    gemini_turns.script = Script(events=load_events("gemini_prompt_blocked.json"))
    socket = await ws(alice)

    await socket.send_message("Something forbidden")
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    reason = "The model declined to answer this message (safety filter: PROHIBITED_CONTENT)."
    assert deltas == []
    assert (done["status"], done["content"], done["error"]) == ("error", "", reason)
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:3] == ("error", "", reason)


async def test_transient_503_before_the_first_token_is_retried_without_repeating_text(
    upstream: Upstream, ws, alice, persona
):
    upstream.reply(fail_first=1, fail_status=503)
    socket = await ws(alice)

    await socket.send_message(QUESTION)
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    assert "".join(deltas) == EXPECTED
    assert (done["status"], done["content"]) == ("complete", EXPECTED)
    assert len(upstream.server.requests_for("reply")) == 2
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:2] == ("complete", EXPECTED)


async def test_slow_first_token_ends_the_reply_with_a_timeout(
    openai_turns: TurnServer, ws, alice, persona, limits
):
    limits.LLM_PROVIDER = "openai"
    limits.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"), pause_before={1: 5})
    host = openai_turns.base_url.removeprefix("http://")
    socket = await ws(alice)

    await socket.send_message(QUESTION)
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    assert deltas == []
    assert done["status"] == "error"
    reason = f"The OpenAI-compatible server at {host} did not start answering within 0.3 seconds."
    assert done["error"] == reason
    assert len(openai_turns.requests_for("reply")) == 1
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:3] == ("error", "", reason)


# --- stop -----------------------------------------------------------------------------


async def test_stop_closes_the_upstream_stream_and_saves_stopped(
    upstream: Upstream, ws, alice, persona
):
    upstream.reply(event_pause=0, pause_before={upstream.first_text + 1: 30})
    conversation_id = await db_call(existing_conversation)(alice, persona)
    socket = await ws(alice)

    await socket.send_message(QUESTION, conversation_id=conversation_id)
    accepted = await socket.receive()
    first = await socket.receive()
    assert first["type"] == "chat.delta"
    assert not upstream.server.client_closed.is_set()

    await socket.send({"type": "chat.stop", "conversation_id": conversation_id})
    _, later, done = split([accepted, *await socket.receive_until("chat.done")])

    assert upstream.server.client_closed.wait(2), "the server never saw the client hang up"
    assert first["text"] + "".join(later) == "Arr, the treasure"
    assert (done["status"], done["content"]) == ("stopped", "Arr, the treasure")
    saved = await db_call(reply_row)(accepted["message_id"])
    assert saved[:2] == ("stopped", "Arr, the treasure")


# --- a new conversation: the model's request goes out while the message is written ---------


class Twin:
    """A message of this user and `client_id` written by another transaction (the same send
    beginning on another worker) on a thread of its own, kept open until `end`, then
    committed or rolled back."""

    def __init__(self, owner: Any, persona: Persona, client_id: uuid.UUID, *, commit: bool):
        self.holding, self.ending = threading.Event(), threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(
            target=self._hold, args=(owner, persona, client_id, commit), daemon=True
        )
        self.thread.start()

    def _hold(self, owner: Any, persona: Persona, client_id: uuid.UUID, commit: bool) -> None:
        try:
            with transaction.atomic():
                twin = Conversation.objects.create(owner=owner, persona=persona, title="Twin")
                Message.objects.create(
                    conversation=twin,
                    owner=owner,
                    role=Message.Role.USER,
                    content=QUESTION,
                    client_id=client_id,
                )
                self.holding.set()
                self.ending.wait(30)
                transaction.set_rollback(not commit)
        except BaseException as exc:
            self.failed = exc
        finally:
            self.holding.set()
            connection.close()

    async def written(self) -> None:
        assert await asyncio.to_thread(self.holding.wait, 10)
        if self.failed is not None:
            raise self.failed

    async def end(self) -> None:
        self.ending.set()
        await asyncio.to_thread(self.thread.join, 10)
        if self.failed is not None:
            raise self.failed


def lock_waited() -> bool:
    """Whether a statement waits on a lock, within 5 s."""
    try:
        deadline = time.monotonic() + 5
        while not (waited := waiting_on_a_lock()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return waited
    finally:
        connection.close()


async def requests_for(server: TurnServer, purpose: str, count: int) -> None:
    async with asyncio.timeout(10):
        while len(server.requests_for(purpose)) < count:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def sent_beside_a_twin(
    server: TurnServer, ws: Any, owner: Any, persona: Persona, *, commit: bool
) -> AsyncIterator[Socket]:
    """A new chat's first message sent while another transaction holds the same send's
    message open (`Twin`), once the model has its request; the twin ends with the block."""
    client_id = uuid.uuid4()
    twin = Twin(owner, persona, client_id, commit=commit)
    try:
        await twin.written()
        socket = await ws(owner)
        await socket.send_message(QUESTION, client_id=str(client_id))
        await requests_for(server, "reply", 1)
        yield socket
    finally:
        await twin.end()


@pytest.fixture
def postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the begin's statements run on the event loop on PostgreSQL only")


async def test_a_new_chats_model_hears_the_question_while_its_message_is_being_written(
    postgresql, openai_turns, limits, ws, alice, persona
):
    """Once a new conversation's read has passed every check, its prompt is known: the
    model's request goes out then, and its first token is on its way while the message is
    written. Seen with the write held up by a lock: the model has the question before the
    message is saved, and the reply streams and is saved once it is."""
    limits.LLM_PROVIDER = "openai"
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    async with sent_beside_a_twin(openai_turns, ws, alice, persona, commit=False) as socket:
        assert await asyncio.to_thread(lock_waited), "the message's write is not waiting"
        assert await db_call(counts)() == (0, 0)  # nothing of this send is saved yet
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    [request] = openai_turns.requests_for("reply")
    assert conversation_of(request.body) == [("user", QUESTION)]
    assert "".join(deltas) == done["content"] == EXPECTED
    assert await db_call(reply_row)(accepted["message_id"]) == ("complete", EXPECTED, "", 31, 9)
    assert await db_call(counts)() == (1, 2)


@pytest.mark.parametrize("refused_by", ["budget", "persona"])
async def test_a_new_chat_refused_by_its_checks_never_reaches_the_model(
    postgresql, openai_turns, limits, ws, alice, persona, refused_by, monkeypatch
):
    """The request goes out ahead of the write, never ahead of the checks: a used-up
    budget, or a persona the user may not use, refuses the turn before the model hears it.
    (A stream started and stopped at once may never reach the server: its start is seen.)"""
    limits.LLM_PROVIDER = "openai"
    streams_started: list[Any] = []

    def model_stream(*args: Any) -> Any:
        streams_started.append(args)
        return ModelStream(*args)

    monkeypatch.setattr(start, "ModelStream", model_stream)
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    chosen = None
    if refused_by == "budget":
        limits.TOKEN_BUDGET = 0
    else:
        limited = await db_call(group_only_persona)()
        chosen = limited.slug
    socket = await ws(alice)

    await socket.send_message(QUESTION, persona=chosen)
    refusal = await socket.receive_type("chat.error")

    assert refusal["code"] == {"budget": "quota_exceeded", "persona": "not_found"}[refused_by]
    assert streams_started == []
    assert openai_turns.requests == []
    assert await db_call(counts)() == (0, 0)


def group_only_persona() -> Persona:
    limited = Persona.objects.create(slug="counsel", name="Counsel", system_prompt="Law.")
    limited.groups.add(Group.objects.create(name="legal"))
    return limited


async def test_a_model_request_sent_ahead_of_a_write_that_found_a_twin_is_hung_up(
    postgresql, openai_turns, limits, ws, alice, persona, monkeypatch
):
    """The same send began on another worker and wrote its message first: this send's
    write saves nothing, and the model's stream it started ahead is closed before its
    answer is done (no words streamed from it). The send is answered with the twin's
    reply, generated once."""
    limits.LLM_PROVIDER = "openai"
    monkeypatch.setattr(start, "TWIN_WAIT_SECONDS", 0.2)  # the twin here never starts one
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"), event_pause=0.5)
    async with sent_beside_a_twin(openai_turns, ws, alice, persona, commit=True) as socket:
        pass  # the twin commits as the block ends: this send's write then finds its message
    accepted, deltas, done = split(await socket.receive_until("chat.done"))

    hung_up = await asyncio.to_thread(openai_turns.client_closed.wait, 2)
    assert hung_up, "the request sent ahead was never hung up"
    assert len(openai_turns.requests_for("reply")) == 2
    assert "".join(deltas) == done["content"] == EXPECTED
    twin = await db_call(lambda: str(Conversation.objects.get(title="Twin").id))()
    assert accepted["conversation_id"] == twin
    assert await db_call(counts)() == (1, 2)


# --- titles ---------------------------------------------------------------------------


async def updates_until(socket: Socket, title: str, timeout: float = 10) -> list[str]:
    """The titles announced by `conversation.updated`, up to `title`."""
    titles: list[str] = []
    async with asyncio.timeout(timeout):
        while not titles or titles[-1] != title:
            frame = await socket.receive(timeout, updates=True)
            if frame["type"] == "conversation.updated":
                titles.append(frame["title"])
    return titles


async def test_new_conversation_gets_the_generated_title(upstream: Upstream, ws, alice, persona):
    upstream.reply(event_pause=0)
    upstream.server.title_script = Script(
        events=load_title_events(upstream, f'**"{TITLE}."**\nA story about treasure.')
    )
    socket = await ws(alice)
    other_tab = await ws(alice)

    await socket.send_message(QUESTION)
    accepted = await socket.receive()
    titles = await updates_until(socket, TITLE)
    await side_work_done()

    assert accepted["title"] == QUESTION
    assert titles == [QUESTION, TITLE]
    assert await updates_until(other_tab, TITLE) == [QUESTION, TITLE]
    assert await db_call(title_of)(accepted["conversation_id"]) == TITLE
    (asked,) = upstream.server.requests_for("title")
    assert system_text(asked.body) == TITLE_INSTRUCTION
    assert conversation_of(asked.body) == [("user", QUESTION)]


async def test_failed_title_call_keeps_the_heuristic_title(
    openai_turns: TurnServer, ws, alice, persona, settings
):
    settings.LLM_PROVIDER = "openai"
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    openai_turns.title_script = Script(fail_first=99, fail_status=500)
    socket = await ws(alice)

    await socket.send_message(QUESTION)
    frames = await socket.receive_until("chat.done")
    await side_work_done()

    accepted, _, done = split(frames)
    assert done["content"] == EXPECTED
    assert [f["title"] for f in frames if f["type"] == "conversation.updated"] == [QUESTION]
    assert await socket.nothing_pending()
    assert await db_call(title_of)(accepted["conversation_id"]) == QUESTION
    assert len(openai_turns.requests_for("title")) >= 1


async def test_no_title_call_for_a_conversation_that_exists(
    openai_turns: TurnServer, ws, alice, persona, settings
):
    settings.LLM_PROVIDER = "openai"
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    conversation_id = await db_call(existing_conversation)(alice, persona, "Ahoy!", "Ahoy!")
    socket = await ws(alice)

    await socket.send_message(QUESTION, conversation_id=conversation_id)
    await socket.receive_until("chat.done")
    await side_work_done()

    assert openai_turns.requests_for("title") == []
    assert await db_call(title_of)(conversation_id) == "Treasure hunt"


async def test_an_empty_conversation_is_named_by_its_first_message(
    upstream: Upstream, ws, alice, persona
):
    """A chat made empty (`POST /api/conversations/`) is named as a new one is: its first
    message's heuristic title in `chat.accepted` and announced at once, then the model's."""
    upstream.reply(event_pause=0)
    upstream.server.title_script = Script(events=load_title_events(upstream, TITLE))
    made = await db_call(lambda: Conversation.objects.create(owner=alice, persona=persona))()
    socket = await ws(alice)

    await socket.send_message(QUESTION, conversation_id=str(made.id))
    accepted = await socket.receive()
    titles = await updates_until(socket, TITLE)
    await side_work_done()

    assert (made.title, accepted["title"]) == ("", QUESTION)
    assert titles == [QUESTION, TITLE]
    assert await db_call(title_of)(str(made.id)) == TITLE
    (asked,) = upstream.server.requests_for("title")
    assert conversation_of(asked.body) == [("user", QUESTION)]


async def test_a_conversation_with_messages_keeps_an_empty_title(
    openai_turns: TurnServer, ws, alice, persona, settings
):
    """Only a chat's first message names it: one whose title was cleared (in admin) after
    it had messages stays as it is."""
    settings.LLM_PROVIDER = "openai"
    openai_turns.script = Script(events=load_events("openai_stream_ok.json"))
    conversation_id = await db_call(existing_conversation)(alice, persona, "Ahoy!", "Ahoy!")
    await db_call(Conversation.objects.filter(id=conversation_id).update)(title="")
    socket = await ws(alice)

    await socket.send_message(QUESTION, conversation_id=conversation_id)
    frames = await socket.receive_until("chat.done")
    await side_work_done()

    assert frames[0]["title"] == ""
    assert [f for f in frames if f["type"] == "conversation.updated"] == []
    assert openai_turns.requests_for("title") == []
    assert await db_call(title_of)(conversation_id) == ""


def load_title_events(upstream: Upstream, text: str) -> list[dict[str, Any]]:
    if upstream.name == "openai":
        return openai_text_events(text)
    return gemini_text_events(text)


@pytest.mark.parametrize("text", ["Short", f"**{TITLE}**\nmore"])
async def test_scripted_streams_are_valid_sdk_payloads(text: str) -> None:
    for chunk in openai_text_events(text):
        ChatCompletionChunk.model_validate(chunk)
    for response in gemini_text_events(text):
        types.GenerateContentResponse.model_validate(response)


# --- branches ------------------------------------------------------------------------------


async def test_after_an_edit_the_old_branch_never_reaches_the_model(
    upstream: Upstream, ws, alice, persona
):
    upstream.reply(event_pause=0)
    socket = await ws(alice)
    await socket.send_message("My parrot is called Zanzibar.")
    first = await socket.receive_type("chat.accepted")
    await socket.receive_until("chat.done")
    conversation_id = first["conversation_id"]
    await socket.send_message("What is my parrot called?", conversation_id=conversation_id)
    await socket.receive_until("chat.done")

    # Edit the first message: a new first message, so nothing of the old branch is history.
    await socket.send_message(
        "Where is the treasure?", conversation_id=conversation_id, parent_id=None
    )
    edited = (await socket.receive_until("chat.done"))[-1]
    # Regenerate that reply: the reply being replaced is no history either.
    await socket.regenerate(conversation_id, edited["message_id"])
    regenerated = await socket.receive_until("chat.done")
    assert regenerated[-1]["status"] == "complete"

    replies = upstream.server.requests_for("reply")
    assert len(replies) == 4
    assert conversation_of(replies[1].body) == [
        ("user", "My parrot is called Zanzibar."),
        ("assistant", EXPECTED),
        ("user", "What is my parrot called?"),
    ]
    for sent in replies[2:]:
        assert conversation_of(sent.body) == [("user", QUESTION)]
        assert "Zanzibar" not in str(sent.body)
