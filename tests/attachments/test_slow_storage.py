"""A storage that is slow to take files (an S3 bucket far away) slows uploads, not chats."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from attachments.models import Upload
from conversations.db import db_call
from tests.conftest import release_shared_thread

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


class HeldStorage(FileSystemStorage):
    """The edge of the project: a bucket that takes each file only when the test says so."""

    release = threading.Event()
    waiting = 0
    lock = threading.Lock()

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        with HeldStorage.lock:
            HeldStorage.waiting += 1
        HeldStorage.release.wait(30)
        return super().save(name, content, max_length)


async def test_uploads_waiting_on_the_storage_hold_up_no_chat(
    ws: Any, alice: Any, persona: Any, fast_demo: Any, settings: Any, tmp_path: Path
) -> None:
    if settings.DB_CALL_THREADS <= 0:
        pytest.skip("SQLite runs every database call on one thread")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": f"{__name__}.HeldStorage",
            "OPTIONS": {"location": tmp_path / "media"},
        },
    }
    settings.UPLOADS_PER_MINUTE = 1000
    HeldStorage.release.clear()
    HeldStorage.waiting = 0
    client = AsyncClient()
    await client.aforce_login(alice)
    stuck = settings.DB_CALL_THREADS + 2

    async def upload(index: int) -> Any:
        note = SimpleUploadedFile(f"note-{index}.txt", b"remember the milk")
        return await client.post("/api/uploads/", {"file": note})

    uploads = [asyncio.ensure_future(upload(i)) for i in range(stuck)]
    try:
        # As many uploads wait on the bucket as the worker has threads for chat turns.
        async with asyncio.timeout(20):
            while HeldStorage.waiting < settings.DB_CALL_THREADS:
                await asyncio.sleep(0.02)

        socket = await ws(alice)
        await socket.send_message("Are you still there while my files upload?")
        frames = await socket.receive_until("chat.done")

        assert frames[-1]["status"] == "complete"
        assert not any(u.done() for u in uploads)  # the bucket still holds every upload
    finally:
        HeldStorage.release.set()
        answers = await asyncio.gather(*uploads)
    assert [a.status_code for a in answers] == [201] * stuck
    assert await db_call(Upload.objects.filter(owner=alice).count)() == stuck
    await release_shared_thread()  # where aforce_login ran
