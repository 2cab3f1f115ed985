"""A flood of uploads waits for the decoders without taking the threads everything else
needs: the real server (Uvicorn, as `make run` starts it) with one decoder, slow files."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.attachments.test_streaming_limit import multipart, read_answer, request_head
from tests.conftest import session_cookie, subprocess_database_url
from tests.ops.conftest import fetch
from tests.workers.conftest import Worker

pytestmark = [pytest.mark.django_db(transaction=True)]

PORT = 8623
UPLOADS = 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Worker]:
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "REDIS_URL": "",
        "DJANGO_DEBUG": "true",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "UPLOADS_PER_MINUTE": "1000",
        "UPLOAD_DECODERS": "1",
    }
    env.pop("DATABASE_TEST_NAME", None)
    worker = Worker("uploads-flood", env, server="uvicorn")
    worker.port = PORT
    try:
        yield worker.start()
    finally:
        worker.close()


def slow_gif() -> bytes:
    """An animation of 600 frames of noise: most of a second to re-encode, every time."""
    frames = [Image.frombytes("L", (100, 100), os.urandom(10_000)).convert("P") for _ in range(600)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=20)
    return out.getvalue()


def upload(cookie: str, data: bytes, answers: list[int]) -> None:
    head, tail = multipart(data, "noise.gif")
    body = head + data + tail
    with socket.create_connection(("127.0.0.1", PORT), timeout=120) as sock:
        sock.sendall(request_head(cookie, length=len(body)) + body)
        answers.append(read_answer(sock).status)


def test_while_uploads_wait_for_the_decoder_the_server_stays_ready(
    alice: Any, server: Worker
) -> None:
    cookie, data = session_cookie(alice), slow_gif()
    answers: list[int] = []
    senders = [
        threading.Thread(target=upload, args=(cookie, data, answers)) for _ in range(UPLOADS)
    ]
    for sender in senders:
        sender.start()

    # Each decode takes most of a second and there is one decoder: the uploads queue for
    # several seconds, during which readiness (its checks run on threads) must not wait.
    checks = []
    while len(answers) < UPLOADS - 2:
        checks.append(fetch("GET", f"http://127.0.0.1:{PORT}/readyz", timeout=10).status)
    for sender in senders:
        sender.join(120)

    assert checks and set(checks) == {200}, checks
    assert answers == [201] * UPLOADS
