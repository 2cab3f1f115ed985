"""The bench's idea of what ships is the settings' own: rows it labels "shipped", and a
ceiling that coalesces "with the app's rule and window", stay so when a default moves."""

from __future__ import annotations

from django.conf import settings

from bench import run
from bench.ceiling import parse_args


def test_the_ceiling_coalesces_with_the_apps_shipped_window():
    ceiling = parse_args(["--port", "1"])
    assert ceiling.coalesce_ms == settings.STREAM_COALESCE_MS == run.RAMP.coalesce_ms
    assert ceiling.coalesce_max_ms == settings.STREAM_COALESCE_MAX_MS


def test_the_defaults_the_bench_calls_shipped_are_the_settings_defaults():
    for name in (
        "MAX_GENERATIONS_PER_WORKER",
        "MAX_GENERATIONS_PER_USER",
        "STREAM_COALESCE_MS",
        "DEMO_TOKEN_DELAY_MS",
    ):
        assert run.SHIPPED[name] == str(getattr(settings, name)), name


def test_the_reports_bounds_on_backends_are_the_shipped_pool_and_turn_connections():
    """The test settings run PostgreSQL with the shipped pool, as the bench's servers do."""
    assert settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"] == run.POOL_MAX
    assert settings.DB_CALL_THREADS == run.LOOP_CONNECTIONS
