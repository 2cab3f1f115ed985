"""The embedded default (SQLite, in-memory layer, demo provider) works from nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sqlite_default_runs_a_whole_turn(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "LLM_PROVIDER"} and not k.startswith("DEMO_")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DEMO_TOKEN_DELAY_MS="1",
        DJANGO_DEBUG="true",
    )
    result = subprocess.run(
        [sys.executable, "-m", "tests.sqlite_smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["engine"] == "django.db.backends.sqlite3"
    assert report["layer"] == "conversations.replies.layer.LocalChannelLayer"
    assert report["done"]["status"] == "complete"
    assert "Hello Sam!" in report["done"]["content"]
    assert "Captain Redbeard" in report["done"]["content"]
    assert report["saved"] == [
        ["user", "Hello from SQLite"],
        ["assistant", report["done"]["content"]],
    ]
    assert report["path"] == [
        "Hello from SQLite",
        report["done"]["content"],
        "Again",
        report["regenerated"],
    ]
    assert report["named"] == ["Hello from SQLite", "Hello from SQLite"]
    assert report["gone"] == {"saved": None, "counted": 12}
    assert report["pages"]["listed"] == report["pages"]["distinct"] == report["pages"]["total"]
