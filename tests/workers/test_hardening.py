"""Faults found by attacking the running app, each against real workers, PostgreSQL and Redis:
sessions that end, shutdown after socket churn, double submits, the per-user reply cap."""

from __future__ import annotations

import asyncio
import http.cookiejar
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conversations.db import db_call
from conversations.models import Conversation, Message
from tests.conftest import PASSWORD, session_cookie
from tests.workers.conftest import ROOT, Client, Worker, open_with_cookie

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]


def turns_total(worker: Worker) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as page:
        return sum(
            float(line.split()[-1])
            for line in page.read().decode().splitlines()
            if line.startswith("chat_turns_total{")
        )


async def closed_with(client: Client, timeout: float = 10) -> int | None:
    """Read until the server closes the socket; its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await client.connection.recv()
        except ConnectionClosed:
            pass
    return client.connection.close_code


def manage(worker_env: dict[str, str], code: str) -> None:
    """Run Django code as an admin's shell would, with the workers' settings (Redis)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def browser(worker: Worker, cookie: str | None = None) -> tuple[Any, str, str]:
    """An HTTP client (with the session cookie, if given), and the CSRF token a page of ours
    gave it."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{worker.port}"
    if cookie is not None:
        jar.set_cookie(
            http.cookiejar.Cookie(
                0, settings.SESSION_COOKIE_NAME, cookie, None, False, "127.0.0.1", True, False,
                "/", True, False, None, False, None, None, {},
            )
        )  # fmt: skip
    page = "/accounts/profile/" if cookie is not None else "/accounts/login/"
    opener.open(f"{base}{page}", timeout=10).read()
    token = next(c.value for c in jar if c.name == settings.CSRF_COOKIE_NAME)
    return opener, base, str(token)


def http_logout(worker: Worker, cookie: str) -> int:
    """POST /accounts/logout/ as the browser does."""
    opener, base, token = browser(worker, cookie)
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode()
    request = urllib.request.Request(f"{base}/accounts/logout/", data=body, method="POST")
    with opener.open(request, timeout=10) as response:
        return int(response.status)


async def test_logout_closes_the_sessions_sockets_on_every_worker(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    cookie = await db_call(session_cookie)(alice)
    other_session = await db_call(session_cookie)(alice)  # Alice on her phone
    on_a, on_b = await open_with_cookie(a, cookie), await open_with_cookie(b, cookie)
    phone = await open_with_cookie(b, other_session)

    assert await asyncio.to_thread(http_logout, a, cookie) == 200
    assert await closed_with(on_a) == 4401
    assert await closed_with(on_b) == 4401
    # Her other session is not logged out: its socket still chats.
    await phone.send_message("still here")
    assert (await phone.until("chat.done"))[-1]["status"] == "complete"
    await phone.close()


@pytest.mark.parametrize(
    "change",
    [
        "u.is_active = False; u.save()",
        "u.set_password('another-horse-battery'); u.save()",
        "u.delete()",
    ],
    ids=["deactivated", "password-changed", "deleted"],
)
async def test_a_changed_user_loses_every_socket(spawn, worker_env, alice, persona, change):
    a, b = spawn("A"), spawn("B")
    cookie = await db_call(session_cookie)(alice)
    on_a, on_b = await open_with_cookie(a, cookie), await open_with_cookie(b, cookie)
    await asyncio.to_thread(
        manage,
        worker_env,
        f"from django.contrib.auth.models import User; u = User.objects.get(id={alice.id}); "
        + change,
    )
    assert await closed_with(on_a) == 4401
    assert await closed_with(on_b) == 4401
    # And a new socket with the old cookie is refused at the handshake.
    with pytest.raises(InvalidStatus):
        await open_with_cookie(a, cookie, attempts=1)


async def test_sigterm_after_socket_churn_exits_in_time_with_replies_saved(
    spawn, alice, bob, persona
):
    drain = 3.0
    worker = spawn("churn", server="uvicorn", GENERATION_DRAIN_SECONDS=str(drain))
    cookie = await db_call(session_cookie)(alice)
    for _ in range(50):
        client = await open_with_cookie(worker, cookie)
        await client.close()
    talking = await open_with_cookie(worker, cookie)
    await talking.send_message("a reply in flight at shutdown")
    accepted = (await talking.until("chat.accepted"))[-1]
    await talking.until("chat.delta")

    worker.terminate()
    began = time.monotonic()
    code = await asyncio.to_thread(worker.wait, drain + 5)
    took = time.monotonic() - began
    print(f"\nexited {took:.1f} s after SIGTERM with code {code}")
    reply = await db_call(
        lambda: Message.objects.filter(id=accepted["message_id"]).values_list("status").first()
    )()
    assert reply is not None and reply[0] in {"complete", "interrupted"}
    log = worker.log_path.read_text()
    # It ended by itself, not by the hard deadline: no task was left hanging.
    assert "still open" not in log, log[-3000:]


async def test_the_same_new_chat_sent_twice_at_once_makes_one_conversation(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    cookie = await db_call(session_cookie)(alice)
    sockets = [
        await open_with_cookie(a, cookie),
        await open_with_cookie(b, cookie),
        await open_with_cookie(a, cookie),
    ]
    frame = {
        "type": "chat.send",
        "conversation_id": None,
        "persona": None,
        "content": "Sent from three tabs at the same moment",
        "client_id": str(uuid.uuid4()),
    }
    await asyncio.gather(*(socket.send(frame) for socket in sockets))
    answers = [await s.until("chat.done") for s in sockets]
    accepted = [next(f for f in frames if f["type"] == "chat.accepted") for frames in answers]
    done = [frames[-1] for frames in answers]

    assert len({f["conversation_id"] for f in accepted}) == 1
    assert len({f["user_message_id"] for f in accepted}) == 1
    assert len({f["message_id"] for f in done}) == 1
    assert len({f["content"] for f in done}) == 1
    counts = await db_call(
        lambda: (
            Conversation.objects.filter(owner=alice).count(),
            Message.objects.filter(conversation__owner=alice, role="user").count(),
            Message.objects.filter(conversation__owner=alice, role="assistant").count(),
        )
    )()
    assert counts == (1, 1, 1)
    # One model call: one turn ran, on one of the workers.
    assert turns_total(a) + turns_total(b) == 1
    for socket in sockets:
        await socket.close()


def post_message(worker: Worker, cookie: str, conversation_id: str, body: bytes) -> int:
    opener, base, token = browser(worker, cookie)
    request = urllib.request.Request(
        f"{base}/api/conversations/{conversation_id}/messages/", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("X-CSRFToken", token)
    with opener.open(request, timeout=60) as response:
        return int(response.status)


async def test_the_same_message_over_socket_and_http_at_once_is_saved_once(spawn, alice, persona):
    a, b = spawn("A"), spawn("B")
    cookie = await db_call(session_cookie)(alice)
    made = await db_call(
        lambda: str(Conversation.objects.create(owner=alice, persona=persona).id)
    )()
    client_id = str(uuid.uuid4())
    socket = await open_with_cookie(a, cookie)
    body = f'{{"content": "socket and HTTP at once", "client_id": "{client_id}"}}'.encode()
    status, _ = await asyncio.gather(
        asyncio.to_thread(post_message, b, cookie, made, body),
        socket.send(
            {
                "type": "chat.send",
                "conversation_id": made,
                "persona": None,
                "content": "socket and HTTP at once",
                "client_id": client_id,
            }
        ),
    )
    answer = await socket.until("chat.done", timeout=60)
    assert status == 201
    assert answer[-1]["status"] == "complete"
    counts = await db_call(
        lambda: (
            Message.objects.filter(conversation_id=made, role="user").count(),
            Message.objects.filter(conversation_id=made, role="assistant").count(),
        )
    )()
    assert counts == (1, 1)
    assert turns_total(a) + turns_total(b) == 1
    await socket.close()


async def test_the_per_user_reply_cap_holds_across_workers(spawn, alice, persona):
    limits = {"MAX_GENERATIONS_PER_USER": "3", "DEMO_TOKEN_DELAY_MS": "50"}
    a, b = spawn("A", **limits), spawn("B", **limits)
    cookie = await db_call(session_cookie)(alice)
    sockets = [await open_with_cookie(w, cookie) for w in (a, b, a, b, a, b)]
    sent = await asyncio.gather(*(s.send_message(f"at once {i}") for i, s in enumerate(sockets)))
    answers: list[dict[str, Any]] = []
    for socket, client_id in zip(sockets, sent, strict=True):
        async with asyncio.timeout(20):
            while True:
                frame = await socket.receive()
                if frame.get("client_id") == client_id and frame["type"] in {
                    "chat.accepted",
                    "chat.error",
                }:
                    answers.append(frame)
                    break
    kinds = sorted(f["type"] if f["type"] == "chat.accepted" else f["code"] for f in answers)
    assert kinds == ["busy", "busy", "busy", "chat.accepted", "chat.accepted", "chat.accepted"]
    for socket in sockets:
        await socket.close()


def login_status(worker: Worker, username: str, password: str, **headers: str) -> int:
    """POST the login form as a browser on this machine would; the answer's status."""
    opener, base, token = browser(worker)
    body = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(f"{base}/accounts/login/", data=body, method="POST")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def test_a_forged_forwarded_for_does_not_lift_the_lock_under_make_runs_uvicorn(
    spawn, alice, bob
):
    # Uvicorn believes X-Forwarded-For from 127.0.0.1 unless told not to; `make run` is.
    worker = spawn("uvicorn-login", server="uvicorn", DJANGO_DEBUG="true")
    for index in range(5):  # five accounts guessed from one address lock the address
        await asyncio.to_thread(login_status, worker, f"nobody{index}", "wrong-password")
    forged = {"X-Forwarded-For": "203.0.113.7"}
    assert await asyncio.to_thread(login_status, worker, "bob", PASSWORD, **forged) == 429
