"""Redis going away: a socket's own reply goes on in its worker; /readyz says so."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from tests.workers.conftest import PrivateRedis, deltas_text, open_client

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.slow]


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_stream_survives_redis_going_away(spawn, alice, persona):
    redis = PrivateRedis()
    await redis.start()
    try:
        a = spawn(
            "A",
            REDIS_URL=redis.url,
            DEMO_TOKEN_DELAY_MS="30",
            DEMO_REPLY_WORDS="80",
            REDIS_TIMEOUT_SECONDS="0.5",
        )
        client = await open_client(a, alice)
        await client.send_message("Keep talking if Redis dies")
        frames = await client.until("chat.delta")
        accepted = frames[0]

        redis.stop()
        frames += await client.until("chat.done", timeout=60)

        done = frames[-1]
        assert done["status"] == "complete"
        assert deltas_text(frames, accepted["message_id"]) == done["content"]
        assert len(done["content"].split()) == 80
        status, body = await asyncio.to_thread(readyz, a.port)
        assert status == 503
        assert body["checks"]["channel_layer"] != "ok"
        await client.close()
    finally:
        redis.stop()
