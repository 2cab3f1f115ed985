"""`make bench-smoke` as a test: the benchmark harness still runs and the streaming path is
correct under a small concurrent load, for Daphne and Uvicorn serving the shipped code with
the shipped defaults. Correctness only (all turns complete, no errors, no
long transaction, PostgreSQL backends back to the pool and gone after the server stops);
timings are the benchmark's business, never a test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _smoke_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/chat"
    return urlunsplit(urlsplit(url)._replace(path="/bench_smoke"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--database-url",
            _smoke_database_url(),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "smoke: ok" in output, output[-4000:]
    for variant in ("ceiling", "daphne", "before", "uvicorn", "storm uvicorn"):
        assert f"smoke {variant}" in output, output[-4000:]
    # Daphne and Uvicorn serve what ships: no server setting moved from its default.
    for line in output.splitlines():
        if line.startswith(("smoke daphne", "smoke uvicorn")):
            for setting in ("DB_CALL_THREADS", "MAX_GENERATIONS_PER_WORKER", "DB_POOL_MAX_SIZE"):
                assert setting not in line, line
