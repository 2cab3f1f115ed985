"""/metrics: the numbers move as turns stream, stop, fail and are refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Client | None = None, token: str = "") -> Samples:
    """Every sample of /metrics, read through the view as Prometheus would."""
    client = client or Client()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every label set that includes `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


Diff = Callable[..., float]


async def ascrape() -> Samples:
    return await sync_to_async(scrape)()


def differ(before: Samples, after: Samples) -> Diff:
    def diff(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return diff


pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _open_metrics(settings) -> None:
    # pytest-django runs with DEBUG off, where open metrics must be asked for; the tests
    # below read the numbers, and the refusal tests close them again.
    settings.METRICS_PUBLIC = True


@pytest.mark.asyncio
async def test_a_complete_turn_moves_its_metrics(ws, alice, persona, fast_demo):
    before = await ascrape()
    socket = await ws(alice)
    during_connect = await ascrape()
    await socket.send_message("Count my tokens")
    frames = await socket.receive_until("chat.done")
    after = await ascrape()
    diff = differ(before, after)

    assert value(during_connect, "chat_open_sockets") == value(before, "chat_open_sockets") + 1
    assert frames[-1]["status"] == "complete"
    assert diff("chat_turns_total", status="complete") == 1
    assert diff("chat_frames_streamed_total") >= 1
    assert diff("chat_tokens_streamed_total") == 30  # the demo streams one token per word
    assert diff("chat_time_to_first_token_seconds_count") == 1
    assert diff("chat_turn_db_seconds_count", step="begin") == 1
    assert diff("chat_turn_db_seconds_count", step="save") == 1
    assert value(after, "chat_generations_in_flight") == value(before, "chat_generations_in_flight")
    # The pool's gauges are read from psycopg's pool at scrape time.
    assert value(after, "chat_db_pool_max") >= 1
    assert value(after, "chat_db_pool_connections_opened_total") >= 1
    assert value(after, "chat_db_pool_waiting") == 0
    assert 0 <= value(after, "chat_db_pool_available") <= value(after, "chat_db_pool_size")

    await socket.disconnect()
    closed = await ascrape()
    assert value(closed, "chat_open_sockets") == value(before, "chat_open_sockets")


@pytest.mark.asyncio
async def test_every_delta_frame_is_counted(ws, alice, persona, fast_demo):
    # Coalescing makes several frames; the last one is flushed when the stream ends.
    fast_demo.STREAM_COALESCE_MS = 1000
    before = await ascrape()
    socket = await ws(alice)
    await socket.send_message("Frames, please")
    frames = await socket.receive_until("chat.done")
    after = await ascrape()

    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert len(deltas) >= 2
    assert differ(before, after)("chat_frames_streamed_total") == len(deltas)


@pytest.mark.asyncio
async def test_generations_in_flight_while_streaming_and_a_stop(ws, alice, persona, settings):
    settings.DEMO_TOKEN_DELAY_MS = 20
    settings.DEMO_REPLY_WORDS = 500
    before = await ascrape()
    socket = await ws(alice)
    await socket.send_message("A long story, please")
    accepted = await socket.receive()
    assert (await socket.receive())["type"] == "chat.delta"
    streaming = await ascrape()

    await socket.send({"type": "chat.stop", "conversation_id": accepted["conversation_id"]})
    frames = await socket.receive_until("chat.done")
    after = await ascrape()
    diff = differ(before, after)

    assert frames[-1]["status"] == "stopped"
    assert value(streaming, "chat_generations_in_flight") == (
        value(before, "chat_generations_in_flight") + 1
    )
    assert value(after, "chat_generations_in_flight") == value(before, "chat_generations_in_flight")
    assert diff("chat_turns_total", status="stopped") == 1
    assert diff("chat_turns_total", status="complete") == 0


@pytest.mark.asyncio
async def test_a_provider_error_counts_the_turn_and_the_error(ws, alice, persona, fast_demo):
    fast_demo.DEMO_FAIL_AFTER_WORDS = 5
    before = await ascrape()
    socket = await ws(alice)
    await socket.send_message("This one fails")
    frames = await socket.receive_until("chat.done")
    after = await ascrape()
    diff = differ(before, after)

    assert frames[-1]["status"] == "error"
    assert diff("chat_turns_total", status="error") == 1
    assert (
        total(after, "chat_provider_errors_total", provider="demo")
        - total(before, "chat_provider_errors_total", provider="demo")
        == 1
    )


@pytest.mark.asyncio
async def test_refused_requests_count_by_code_and_start_no_turn(
    ws, alice, persona, fast_demo, settings
):
    settings.MAX_MESSAGE_CHARS = 100
    before = await ascrape()
    socket = await ws(alice)
    await socket.send_raw(text="this is not json")
    invalid = await socket.receive()
    await socket.send_message("x" * 101)
    too_large = await socket.receive()
    await socket.send_message("hello", conversation_id=str(uuid.uuid4()))
    not_found = await socket.receive()
    after = await ascrape()
    diff = differ(before, after)

    assert [invalid["code"], too_large["code"], not_found["code"]] == [
        "invalid",
        "too_large",
        "not_found",
    ]
    assert diff("chat_refusals_total", code="invalid") == 1
    assert diff("chat_refusals_total", code="too_large") == 1
    assert diff("chat_refusals_total", code="not_found") == 1
    assert total(after, "chat_turns_total") == total(before, "chat_turns_total")


def test_metrics_token_is_required_when_set(client: Client, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-token"

    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer s3cret-tokeX"})
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == (
        401
    )

    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")
    text = ok.content.decode()
    for name in (
        "chat_open_sockets",
        "chat_generations_in_flight",
        "chat_turns_total",
        "chat_refusals_total",
        "chat_time_to_first_token_seconds_bucket",
        "chat_tokens_streamed_total",
        "chat_frames_streamed_total",
        "chat_turn_db_seconds_bucket",
        "chat_reply_save_retries_total",
        "chat_reply_save_failed_total",
        "chat_provider_errors_total",
        "chat_db_pool_size",
        "chat_db_pool_available",
        "chat_db_pool_waiting",
        "chat_db_pool_connections_opened_total",
        "chat_db_turn_connections_in_use",
        "chat_db_turn_connections_idle",
    ):
        assert name in text, name


def test_production_refuses_metrics_without_a_token(client: Client, settings) -> None:
    settings.DEBUG = False
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False

    response = client.get("/metrics")

    assert response.status_code == 403
    assert b"chat_turns_total" not in response.content


def test_metrics_without_a_token_are_open_when_asked_for(client: Client, settings) -> None:
    settings.DEBUG = False
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = True
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE chat_turns_total counter" in response.content.decode()


def test_metrics_are_open_in_development(client: Client, settings) -> None:
    settings.DEBUG = True
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE chat_turns_total counter" in response.content.decode()
