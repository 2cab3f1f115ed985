"""PostgreSQL going away: refusals that save nothing, and saves that wait for it to return.

These run against a scratch PostgreSQL server of their own, so they can stop it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.workers.conftest import ROOT, deltas_text, open_with_cookie, scratch_cookies

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def reply_rows(scratch_pg) -> list[tuple[str, str, str]]:
    return [
        (str(r[0]), r[1], r[2])
        for r in scratch_pg.query(
            "SELECT id, status, content FROM conversations_message WHERE role = 'assistant'"
        )
    ]


async def test_database_down_when_a_turn_begins_is_unavailable(spawn, scratch_pg):
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, ["alice"])
    a = spawn("A", DATABASE_URL=scratch_pg.url, DB_POOL_TIMEOUT="1", DB_CONNECT_TIMEOUT="1")
    client = await open_with_cookie(a, cookies["alice"])

    await asyncio.to_thread(scratch_pg.stop)
    client_id = await client.send_message("Is anyone there?")
    refused = (await client.until("chat.error", timeout=30))[-1]
    await asyncio.to_thread(scratch_pg.start)

    assert refused["code"] == "unavailable"
    assert refused["client_id"] == client_id
    assert scratch_pg.query("SELECT count(*) FROM conversations_message") == [(0,)]
    assert scratch_pg.query("SELECT count(*) FROM conversations_conversation") == [(0,)]
    await client.send_message("And now?")
    assert (await client.until("chat.done", timeout=30))[-1]["status"] == "complete"
    await client.close()


async def test_a_resume_while_the_database_is_down_says_to_try_again(spawn, scratch_pg):
    """A resume of a reply that has ended asks the database whether the conversation is the
    user's. With the database down it is refused, and the refusal says so without claiming
    that nothing was saved (the reply was); asked again once it is back, the resume is
    answered."""
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, ["alice"])
    a = spawn("A", DATABASE_URL=scratch_pg.url, DB_POOL_TIMEOUT="1", DB_CONNECT_TIMEOUT="1")
    client = await open_with_cookie(a, cookies["alice"])
    await client.send_message("Answer me, then I will look again")
    done = (await client.until("chat.done", timeout=30))[-1]
    resume = {"type": "chat.resume", "conversation_id": done["conversation_id"], "after_seq": 0}

    await asyncio.to_thread(scratch_pg.stop)
    await client.send(resume)
    refused = (await client.until("chat.error", timeout=30))[-1]
    await asyncio.to_thread(scratch_pg.start)

    assert (refused["code"], refused["conversation_id"]) == ("unavailable", done["conversation_id"])
    assert "nothing was saved" not in refused["message"]
    assert "try again" in refused["message"]
    # Asked again, as the message says: the pool may take a moment to reconnect.
    async with asyncio.timeout(30):
        while True:
            await client.send(resume)
            answer = await client.receive()
            if answer["type"] != "chat.error":
                break
            assert answer["code"] == "unavailable", answer
            await asyncio.sleep(0.5)
    assert (answer["type"], answer["conversation_id"]) == ("chat.idle", done["conversation_id"])
    await client.close()


def api_get(worker, path: str, cookie: str) -> tuple[int, dict]:
    """GET a JSON API path as the page does; the status and the JSON body, errors included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}{path}",
        headers={"Cookie": f"sessionid={cookie}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_the_json_api_answers_unavailable_while_the_database_is_down(spawn, scratch_pg):
    """A page that loads a conversation while PostgreSQL is away hears `unavailable` (503,
    JSON) and may ask again; not a server error. Once it is back, the same call answers."""
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, ["alice"])
    a = spawn("A", DATABASE_URL=scratch_pg.url, DB_POOL_TIMEOUT="1", DB_CONNECT_TIMEOUT="1")

    await asyncio.to_thread(scratch_pg.stop)
    status, body = await asyncio.to_thread(api_get, a, "/api/conversations/", cookies["alice"])
    await asyncio.to_thread(scratch_pg.start)

    assert status == 503, body
    assert body["error"]["code"] == "unavailable"
    assert "try again" in body["error"]["message"]
    async with asyncio.timeout(30):  # the pool reconnects in the background
        while (await asyncio.to_thread(api_get, a, "/api/conversations/", cookies["alice"]))[
            0
        ] != 200:
            await asyncio.sleep(0.5)


async def test_restart_during_twenty_live_streams_loses_no_reply(spawn, scratch_pg):
    users = [f"user{i}" for i in range(5)]
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, users)
    a = spawn(
        "A",
        DATABASE_URL=scratch_pg.url,
        DEMO_TOKEN_DELAY_MS="40",
        DEMO_REPLY_WORDS="60",
        DB_POOL_TIMEOUT="1",
        DB_CONNECT_TIMEOUT="1",
        MAX_GENERATIONS_PER_USER="10",
    )
    clients = [await open_with_cookie(a, cookies[users[i % 5]]) for i in range(20)]
    client_ids = [await c.send_message(f"Stream number {i}") for i, c in enumerate(clients)]
    accepted = [
        (await c.until("chat.accepted", client_id=cid))[-1]
        for c, cid in zip(clients, client_ids, strict=True)
    ]

    await asyncio.to_thread(scratch_pg.restart)
    finals = await asyncio.gather(
        *(
            c.until("chat.done", timeout=60, message_id=acc["message_id"])
            for c, acc in zip(clients, accepted, strict=True)
        )
    )

    rows = {mid: (status, content) for mid, status, content in reply_rows(scratch_pg)}
    for frames, acc in zip(finals, accepted, strict=True):
        done = frames[-1]
        assert done["status"] == "complete"
        assert deltas_text(frames, acc["message_id"]) == done["content"]
        assert rows[acc["message_id"]] == ("complete", done["content"])
    assert len(rows) == 20
    for client in clients:
        await client.close()


async def test_save_that_never_succeeds_is_kept_for_recover_streams(spawn, scratch_pg, redis_url):
    cookies = await asyncio.to_thread(scratch_cookies, scratch_pg.url, ["alice"])
    a = spawn(
        "A",
        DATABASE_URL=scratch_pg.url,
        DEMO_TOKEN_DELAY_MS="20",
        DEMO_REPLY_WORDS="40",
        DB_POOL_TIMEOUT="1",
        DB_CONNECT_TIMEOUT="1",
        REPLY_SAVE_RETRY_SECONDS="2",
    )
    client = await open_with_cookie(a, cookies["alice"])
    await client.send_message("Save me later")
    accepted = (await client.until("chat.accepted"))[-1]
    frames = await client.until("chat.delta")

    await asyncio.to_thread(scratch_pg.stop)
    frames += await client.until("chat.error", timeout=60)
    # Left alone, the worker's own recovery round would save it once the database is
    # back; here nobody is left but the command.
    await client.close()
    a.kill()
    await asyncio.to_thread(scratch_pg.start)

    assert frames[-1]["code"] == "save_failed"
    text = deltas_text(frames, accepted["message_id"])
    assert len(text.split()) == 40
    assert reply_rows(scratch_pg) == []

    env = {**os.environ, "DATABASE_URL": scratch_pg.url, "REDIS_URL": redis_url}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "manage.py", "recover_streams"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "recovered 1, failed 0" in result.stdout
    assert reply_rows(scratch_pg) == [(accepted["message_id"], "complete", text)]
