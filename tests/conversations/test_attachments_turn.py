"""chat.send with attachments over the real socket stack, with the demo model: whose uploads a
message may carry, what is refused before anything is saved, what the reply and the API then
show, and that the turn still holds no connection while it streams."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from attachments.judge import judge
from attachments.models import Attachment, Upload
from attachments.services import upload_create
from conversations import services
from conversations.db import db_call
from conversations.errors import NotFound
from conversations.models import Conversation, Message
from conversations.services import message_append
from personas.models import Persona
from tests.attachments import conftest as attachments_conftest
from tests.attachments import files
from tests.conftest import admin_dsn, pool_checked_out, release_shared_thread
from tests.conversations import test_connections
from tests.conversations.test_connections import sample_while_streaming

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

main_thread_released = test_connections.main_thread_released


# Uploads stored in a folder of the test's own, as in tests/attachments.
media = attachments_conftest.media


def uploaded(owner: Any, name: str, data: bytes) -> str:
    """An upload as POST /api/uploads/ makes it: judged (re-encoded), stored, inserted."""
    made = upload_create(owner_id=owner.pk, name=name, judged=judge(data, name), quota_bytes=0)
    return str(made.id)


def counts() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Attachment.objects.count()


async def send(socket: Any, content: str, attachments: Any, **extra: Any) -> None:
    await socket.send(
        {
            "type": "chat.send",
            "conversation_id": None,
            "content": content,
            "client_id": str(uuid.uuid4()),
            "attachments": attachments,
            **extra,
        }
    )


async def test_the_reply_sees_the_files_and_the_api_lists_them_in_order(
    ws: Any, alice: Any, persona: Any, fast_demo: Any
) -> None:
    photo = await db_call(uploaded)(alice, "cat.png", files.png(40, 30))
    notes = await db_call(uploaded)(alice, "notes.txt", b"Feed the cat at six.\n")
    socket = await ws(alice)

    await send(socket, "When do I feed it?", [photo, notes])
    frames = await socket.receive_until("chat.done")

    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    assert "I see 1 image (cat.png, 40×30) and 1 file (notes.txt)." in frames[-1]["content"]
    client = Client()
    await db_call(client.force_login)(alice)
    listed = await db_call(client.get)(f"/api/conversations/{accepted['conversation_id']}/")
    question = listed.json()["messages"][0]
    assert question["content"] == "When do I feed it?"
    assert [(a["id"], a["name"], a["content_type"]) for a in question["attachments"]] == [
        (photo, "cat.png", "image/png"),
        (notes, "notes.txt", "text/plain"),
    ]
    assert question["attachments"][0]["url"] == f"/api/uploads/{photo}/"
    assert listed.json()["messages"][1]["attachments"] == []


async def test_a_message_of_files_alone_is_titled_by_its_first_file(
    ws: Any, alice: Any, persona: Any, fast_demo: Any
) -> None:
    photo = await db_call(uploaded)(alice, "holiday-photo.jpg", files.jpeg())
    socket = await ws(alice)

    await send(socket, "", [photo])
    frames = await socket.receive_until("chat.done")

    assert frames[-1]["status"] == "complete"
    accepted = next(f for f in frames if f["type"] == "chat.accepted")
    found = await db_call(Conversation.objects.get)(id=accepted["conversation_id"])
    assert found.title == "holiday-photo.jpg"


async def test_another_users_upload_is_not_found_and_nothing_is_saved(
    ws: Any, alice: Any, bob: Any, persona: Any, fast_demo: Any
) -> None:
    alices = await db_call(uploaded)(alice, "private.png", files.png())
    bobs = await db_call(uploaded)(bob, "mine.png", files.png())
    socket = await ws(bob)

    for attachments in ([alices], [bobs, alices], [str(uuid.uuid4())]):
        await send(socket, "Look", attachments)
        error = await socket.receive_type("chat.error")
        assert (error["code"], error["message"]) == (
            "not_found",
            "No such attachment: upload the file again.",
        )

    assert await db_call(counts)() == (0, 0, 0)


@pytest.mark.parametrize(
    ("attachments", "message"),
    [
        ("not-a-list", "Field 'attachments' must be a list of upload ids."),
        (["nope"], "Field 'attachments' must hold upload ids (UUID strings)."),
        ([7], "Field 'attachments' must hold upload ids (UUID strings)."),
        ([str(uuid.uuid4())] * 5, "A message takes at most 4 attachments."),
    ],
)
async def test_malformed_attachments_are_invalid(
    ws: Any, alice: Any, persona: Any, attachments: Any, message: str
) -> None:
    socket = await ws(alice)

    await send(socket, "Look", attachments)
    error = await socket.receive_type("chat.error")

    assert (error["code"], error["message"]) == ("invalid", message)
    assert await db_call(counts)() == (0, 0, 0)


async def test_the_same_upload_twice_and_an_empty_message_are_invalid(
    ws: Any, alice: Any, persona: Any
) -> None:
    photo = await db_call(uploaded)(alice, "twice.png", files.png())
    socket = await ws(alice)

    await send(socket, "Look", [photo, photo])
    twice = await socket.receive_type("chat.error")
    await send(socket, "", [])
    empty = await socket.receive_type("chat.error")

    assert (twice["code"], twice["message"]) == ("invalid", "The same file is attached twice.")
    assert empty["code"] == "invalid"
    assert await db_call(counts)() == (0, 0, 0)


async def test_a_persona_that_takes_no_images_still_takes_text_files(
    ws: Any, alice: Any, persona: Any, fast_demo: Any
) -> None:
    await db_call(Persona.objects.filter(pk=persona.pk).update)(accepts_images=False)
    photo = await db_call(uploaded)(alice, "photo.png", files.png())
    notes = await db_call(uploaded)(alice, "notes.md", b"# Notes\n")
    socket = await ws(alice)

    await send(socket, "What is this?", [photo])
    refused = await socket.receive_type("chat.error")
    assert refused["code"] == "invalid"
    assert "Assistant" in refused["message"] and "image" in refused["message"]
    assert await db_call(counts)() == (0, 0, 0)

    await send(socket, "Summarise", [notes])
    done = await socket.receive_type("chat.done")
    assert done["status"] == "complete"
    assert "1 file (notes.md)" in done["content"]


async def test_an_attached_upload_can_no_longer_be_deleted_by_its_owner(
    ws: Any, alice: Any, persona: Any, fast_demo: Any
) -> None:
    photo = await db_call(uploaded)(alice, "kept.png", files.png())
    socket = await ws(alice)
    await send(socket, "Keep this", [photo])
    await socket.receive_type("chat.done")
    client = Client()
    await db_call(client.force_login)(alice)

    answer = await db_call(client.delete)(f"/api/uploads/{photo}/")

    assert answer.status_code == 409
    assert await db_call(Upload.objects.filter(id=photo).exists)()


async def test_no_connection_is_checked_out_while_a_reply_about_an_image_streams(
    ws: Any, alice: Any, persona: Any, settings: Any, pg_backends: Any, main_thread_released: None
) -> None:
    photo = await db_call(uploaded)(alice, "stream.png", files.png())
    await release_shared_thread()
    settings.DEMO_TOKEN_DELAY_MS = 15
    settings.DEMO_REPLY_WORDS = 80
    socket = await ws(alice)

    await send(socket, "Describe it at length", [photo])
    assert (await socket.receive())["type"] == "chat.accepted"
    frames, samples = await sample_while_streaming(
        socket, lambda: (pool_checked_out(), pg_backends())
    )

    samples = samples[:-2]  # the last may overlap the save after the final delta
    assert len(samples) >= 10
    assert [checked_out for checked_out, _ in samples] == [0] * len(samples)
    assert all(b.get("idle in transaction", 0) == 0 for _, b in samples)
    assert frames[-1]["status"] == "complete"


def begin_statements(owner: Any, conversation: Conversation, attachments: list[str]) -> int:
    with CaptureQueriesContext(connection) as captured:
        services.turn_begin(
            user_id=owner.id,
            conversation_id=conversation.id,
            persona_slug=None,
            content="One more",
            client_id=uuid.uuid4(),
            history_limit=500,
            attachment_ids=tuple(uuid.UUID(i) for i in attachments),
        )
    return len(captured.captured_queries)


def chat(owner: Any, persona: Any, attached: list[str]) -> Conversation:
    """A question (with these uploads) and its answer."""
    made = Conversation.objects.create(owner=owner, persona=persona)
    question = message_append(conversation=made, role="user", content="Look")
    message_append(conversation=made, role="assistant", content="I see.")
    for position, upload_id in enumerate(attached):
        Attachment.objects.create(message=question, upload_id=upload_id, position=position)
    return made


def statements_of_turns(owner: Any, persona: Any) -> tuple[int, int, int]:
    uploads = [uploaded(owner, f"{n}.png", files.png()) for n in range(8)]
    plain = begin_statements(owner, chat(owner, persona, []), [])
    sending = begin_statements(owner, chat(owner, persona, []), uploads[:4])
    history = begin_statements(owner, chat(owner, persona, uploads[4:]), [])
    return plain, sending, history


async def test_attachments_cost_two_statements_and_a_history_of_files_none(
    alice: Any, persona: Any
) -> None:
    plain, sending, history = await db_call(statements_of_turns)(alice, persona)

    # The uploads are read and the attachment rows inserted: one statement each.
    assert sending == plain + 2
    # The path's files come in the same statement as the path.
    assert history == plain


def waiting_for_a_lock() -> bool:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
            [connection.settings_dict["NAME"]],
        ).fetchone()
    return bool(row and row[0])


def send_while_deleted(owner: Any, persona: Any, upload_id: str) -> BaseException | None:
    """turn_begin attaching the upload while its delete holds the row, then commits."""
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            services.turn_begin(
                user_id=owner.id,
                conversation_id=None,
                persona_slug=None,
                content="Look",
                client_id=uuid.uuid4(),
                history_limit=10,
                attachment_ids=(uuid.UUID(upload_id),),
            )
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            connections.close_all()

    try:
        hold_and_delete(upload_id, send)
    finally:
        connections.close_all()
    return outcome[0]


def hold_and_delete(upload_id: str, send: Any) -> None:
    with transaction.atomic():
        Upload.objects.select_for_update().get(id=upload_id)  # as upload_delete does
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock() and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        Upload.objects.filter(id=upload_id).delete()
    sender.join(10)


async def test_a_file_deleted_while_it_is_sent_is_not_found_not_a_database_outage(
    alice: Any, persona: Any
) -> None:
    photo = await db_call(uploaded)(alice, "going.png", files.png())

    outcome = await asyncio.to_thread(send_while_deleted, alice, persona, photo)

    assert isinstance(outcome, NotFound), repr(outcome)
    assert await db_call(counts)() == (0, 0, 0)
