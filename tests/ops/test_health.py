"""/healthz and /readyz: ready only while the database, the channel layer and the provider are."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.ops.conftest import Daphne, daphne_env, fetch, wait_for


def readyz(base: str) -> tuple[int, dict[str, str]]:
    response = fetch("GET", f"{base}/readyz", timeout=10)
    return response.status, json.loads(response.body)["checks"]


def test_healthz_answers_without_touching_anything(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_names_each_check_when_all_answer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "channel_layer": "ok", "provider": "ok"},
    }
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_fails_on_a_misconfigured_provider_without_telling_the_public_why(
    client: Client, settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.LLM_PROVIDER = "gemini"
    settings.GEMINI_API_KEY = ""
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "channel_layer": "ok", "provider": "fail"},
    }
    assert b"GEMINI" not in response.content
    assert "gemini: Gemini needs an API key: set GEMINI_API_KEY" in caplog.text


@pytest.mark.django_db
def test_readyz_tells_operators_why(client: Client, settings, alice) -> None:
    settings.LLM_PROVIDER = "gemini"
    settings.GEMINI_API_KEY = ""
    settings.METRICS_TOKEN = "ops-token"

    with_token = client.get("/readyz", headers={"Authorization": "Bearer ops-token"})
    wrong_token = client.get("/readyz", headers={"Authorization": "Bearer guess"})
    staff = Client()
    staff.force_login(get_user_model().objects.create_user("root", is_staff=True))
    plain_user = Client()
    plain_user.force_login(alice)

    for operator in (with_token, staff.get("/readyz")):
        assert operator.status_code == 503
        assert operator.json()["checks"]["provider"] == "fail"
        assert "GEMINI_API_KEY" in operator.json()["details"]["provider"]
    for public in (wrong_token, plain_user.get("/readyz")):
        assert public.status_code == 503
        assert "details" not in public.json()
        assert b"GEMINI" not in public.content


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.django_db
def test_readyz_times_out_a_hung_channel_layer(
    client: Client, settings, silent_server, caplog: pytest.LogCaptureFixture
) -> None:
    settings.READYZ_CHECK_TIMEOUT = 0.5
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{silent_server}/0"]},
        }
    }
    began = time.monotonic()
    response = client.get("/readyz")
    took = time.monotonic() - began

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["channel_layer"] == "fail"
    assert checks["database"] == "ok"
    assert took < 3, "a hung dependency must not hang the probe"
    assert "readyz: channel_layer gave no answer within 0.5s" in caplog.text


def test_readyz_follows_postgresql_and_redis_going_and_coming_back(
    throwaway_postgres, throwaway_redis
) -> None:
    """A worker's /readyz while its own PostgreSQL and Redis are stopped and started again."""
    worker = Daphne(
        daphne_env(
            DATABASE_URL=throwaway_postgres.url,
            REDIS_URL=throwaway_redis.url,
            DB_CONNECT_TIMEOUT="2",
            DB_POOL_TIMEOUT="2",
            # This worker is reached over plain HTTP only.
            DJANGO_SECURE_SSL_REDIRECT="false",
        ),
        name="readyz-worker",
    )
    worker.start()
    try:
        worker.wait_ready()
        status, checks = readyz(worker.url)
        assert (status, checks) == (
            200,
            {"database": "ok", "channel_layer": "ok", "provider": "ok"},
        ), worker.logs()

        throwaway_postgres.stop()
        status, checks = readyz(worker.url)
        assert status == 503
        assert checks["database"] == "fail"
        assert checks["channel_layer"] == "ok"

        throwaway_postgres.start()
        wait_for(lambda: readyz(worker.url)[0] == 200, 20, "readyz 200 after PostgreSQL is back")

        throwaway_redis.stop()
        status, checks = readyz(worker.url)
        assert status == 503
        assert checks["channel_layer"] == "fail"
        assert checks["database"] == "ok"

        throwaway_redis.start()
        wait_for(lambda: readyz(worker.url)[0] == 200, 20, "readyz 200 after Redis is back")
    finally:
        worker.stop()
