"""A server started without DJANGO_DEBUG is a production server: it fails closed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, Daphne, daphne_env, fetch

# As nginx forwards a browser's request: HTTPS, so production's redirect leaves it alone.
PROXIED = {"X-Forwarded-Proto": "https", "Host": "127.0.0.1"}


def without_debug(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "DJANGO_DEBUG"}


def test_without_debug_and_secret_key_the_app_refuses_to_start(tmp_path: Path) -> None:
    env = without_debug({**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    env.pop("DJANGO_SECRET_KEY", None)

    checked = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert checked.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in production" in checked.stderr


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Daphne]:
    worker = Daphne(
        daphne_env(
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            REDIS_URL="",
            LLM_PROVIDER="gemini",
            GEMINI_API_KEY="",
            METRICS_TOKEN="",
            METRICS_PUBLIC="",
        ),
        name="production-defaults",
    )
    # The test run's own DJANGO_DEBUG=true must not reach it: unset is what is tested.
    worker.env = without_debug(worker.env)
    worker.start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def test_without_debug_the_server_is_production(production: Daphne) -> None:
    missing = fetch("GET", f"{production.url}/no-such-page/", headers=PROXIED)
    assert missing.status == 404
    assert "URLconf" not in missing.text, "no debug page with the project's URLs"
    assert "frame-ancestors 'none'" in missing.headers["Content-Security-Policy"]

    # Plain HTTP is sent to HTTPS, and the session cookie would be Secure.
    assert fetch("GET", f"{production.url}/accounts/login/").status == 301
    login = fetch("GET", f"{production.url}/accounts/login/", headers=PROXIED)
    assert login.status == 200
    assert "script-src 'self'" in login.headers["Content-Security-Policy"]
    admin = fetch("GET", f"{production.url}/admin/login/", headers=PROXIED)
    assert "script-src 'self'" in admin.headers["Content-Security-Policy"]

    # No token, not asked to be public: the metrics stay private.
    metrics = fetch("GET", f"{production.url}/metrics")
    assert metrics.status == 403
    assert "chat_turns_total" not in metrics.text

    # The probe says which check fails, not which setting is missing.
    ready = fetch("GET", f"{production.url}/readyz")
    assert ready.status == 503
    assert json.loads(ready.body) == {
        "status": "unavailable",
        "checks": {"database": "ok", "channel_layer": "ok", "provider": "fail"},
    }
    assert "GEMINI_API_KEY" in production.logs(), "the detail is in the log"
