"""An upload past MAX_UPLOAD_BYTES is refused while it streams in: the real app server, as
`make run` starts it (Uvicorn), and a client on a raw socket sending the body slowly."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from attachments.models import Upload
from tests.attachments import files
from tests.attachments.conftest import stored_files
from tests.conftest import session_cookie, subprocess_database_url
from tests.workers.conftest import Worker

pytestmark = [pytest.mark.django_db(transaction=True)]

LIMIT = 1024 * 1024  # MAX_UPLOAD_BYTES of the server under test
PORT = 8620
BOUNDARY = "----chatupload1b2c3d4e5f"
CSRF_TOKEN = "t" * 32


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """The server's MEDIA_ROOT."""
    return tmp_path / "server-media"


@pytest.fixture
def server(served: Path) -> Iterator[Worker]:
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "REDIS_URL": "",
        "DJANGO_DEBUG": "true",
        "MEDIA_ROOT": str(served),
        "MAX_UPLOAD_BYTES": str(LIMIT),
        "UPLOADS_PER_MINUTE": "1000",
    }
    env.pop("DATABASE_TEST_NAME", None)
    worker = Worker("uploads-413", env, server="uvicorn")
    worker.port = PORT
    try:
        yield worker.start()
    finally:
        worker.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(data: bytes, filename: str = "big.txt") -> tuple[bytes, bytes]:
    """The multipart body around `data`: (head, tail)."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(
    cookie: str, *, length: int | None, chunked: bool = False, path: str = "/api/uploads/"
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{PORT}",
        f"Origin: http://127.0.0.1:{PORT}",
        f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}; "
        f"{settings.CSRF_COOKIE_NAME}={CSRF_TOKEN}",
        f"X-CSRFToken: {CSRF_TOKEN}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> Answer:
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0.02)[0])


def send_slowly(sock: socket.socket, pieces: Iterator[bytes]) -> tuple[int, bool]:
    """Send piece by piece, pausing between them, until the server answers: (bytes sent,
    whether every piece went)."""
    sent = 0
    for piece in pieces:
        if answered(sock):
            return sent, False
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent, False
        sent += len(piece)
        time.sleep(0.01)
    return sent, True


def connect() -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def pieces_of(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_too_large(answer: Answer) -> None:
    assert answer.status == 413
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == "too_large"
    assert answer.json()["error"]["message"] == (
        "The file is too large: at most 1 MiB is accepted."
    )


def assert_nothing_kept(served: Path) -> None:
    assert not Upload.objects.exists()
    assert stored_files(served) == []


def test_a_file_within_the_limit_goes_through_the_same_server(
    alice: Any, server: Worker, served: Path
) -> None:
    # What the refusals below are measured against: this server stores what it accepts.
    head, tail = multipart(files.png(), "shot.png")
    body = head + files.png() + tail
    with connect() as sock:
        sock.sendall(request_head(session_cookie(alice), length=len(body)) + body)
        answer = read_answer(sock)

    assert answer.status == 201, answer.body
    assert answer.json()["content_type"] == "image/png"
    assert len(stored_files(served)) == 1


def test_a_chunked_body_past_the_limit_is_refused_while_it_is_still_coming(
    alice: Any, server: Worker, served: Path
) -> None:
    head, tail = multipart(b"a" * (3 * LIMIT))
    body = head + b"a" * (3 * LIMIT) + tail
    with connect() as sock:
        sock.sendall(request_head(session_cookie(alice), length=None, chunked=True))
        sent, finished = send_slowly(sock, chunked(body))
        answer = read_answer(sock)

    assert_too_large(answer)
    # The answer came while the client still had most of the file to send.
    assert not finished
    assert LIMIT < sent < len(body)
    assert answer.headers["connection"] == "close"
    assert_nothing_kept(served)


def test_a_declared_length_past_the_limit_is_refused_before_any_of_the_body(
    alice: Any, server: Worker, served: Path
) -> None:
    data = b"a" * (3 * LIMIT)
    head, tail = multipart(data)
    with connect() as sock:
        sock.sendall(request_head(session_cookie(alice), length=len(head + data + tail)))
        # Not a byte of the body is sent: the answer must come without it.
        assert select.select([sock], [], [], 30)[0]
        answer = read_answer(sock)

    assert_too_large(answer)
    assert_nothing_kept(served)


def test_bytes_beyond_the_declared_length_are_no_part_of_the_file(
    alice: Any, server: Worker, served: Path
) -> None:
    # A small file's body, declared exactly, and then 3 MiB more on the same connection: the
    # file ends where the declared length does, and what follows is no request at all.
    head, tail = multipart(b"small")
    body = head + b"small" + tail
    with connect() as sock:
        sock.sendall(request_head(session_cookie(alice), length=len(body)) + body)
        first = read_answer(sock)
        _, finished = send_slowly(sock, pieces_of(b"a" * (3 * LIMIT)))
        second = read_answer(sock)

    assert first.status == 201
    assert first.json()["size"] == 5
    assert (second.status, second.body) == (400, b"Invalid HTTP request received.")
    assert not finished
    assert [upload.size for upload in Upload.objects.all()] == [5]
    assert [path.read_bytes() for path in stored_files(served)] == [b"small"]


def test_a_length_and_chunked_together_are_not_believed(
    alice: Any, server: Worker, served: Path
) -> None:
    # Content-Length says 1 KiB, Transfer-Encoding says chunked, and 3 MiB come.
    data = b"a" * (3 * LIMIT)
    head, tail = multipart(data)
    with connect() as sock:
        sock.sendall(request_head(session_cookie(alice), length=1024, chunked=True))
        _, finished = send_slowly(sock, chunked(head + data + tail))
        answer = read_answer(sock)

    # Uvicorn (httptools) will not frame a request both ways: a request smuggler's trick.
    assert (answer.status, answer.body) == (400, b"Invalid HTTP request received.")
    assert not finished
    assert_nothing_kept(served)
    # The server is still there for the next client.
    with connect() as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n\r\n".encode())
        assert read_answer(sock).status == 200


@pytest.mark.parametrize("path", ["/healthz", "/accounts/login/", "/api/conversations/"])
def test_any_other_body_past_djangos_own_limit_is_refused_while_it_is_still_coming(
    server: Worker, path: str
) -> None:
    # Signed out, no CSRF: a body no view would ever read is not spooled to disk first.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = b"a" * (3 * limit)
    with connect() as sock:
        sock.sendall(request_head("nobody", length=None, chunked=True, path=path))
        sent, finished = send_slowly(sock, chunked(body))
        answer = read_answer(sock)

    assert answer.status == 413
    assert answer.json()["error"] == {
        "code": "too_large",
        "message": "The request is too large: at most 2.5 MiB is accepted.",
    }
    assert not finished
    assert limit < sent < len(body)
