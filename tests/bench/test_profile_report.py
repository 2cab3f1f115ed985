"""profile.md's side-by-side of the app and the ceiling near capacity: each part of the work
in µs a token, from py-spy's raw stacks, adding up to the run's measured CPU per token."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run

# py-spy --format raw: one stack a line, root first, frames joined by ";", then the count.
LOOP = "Runner.run (asyncio/runners.py:118)"
APP_FLUSH = "Generation._stream.<locals>.flush (conversations/replies/generation.py:312)"
UVICORN_SEND = "WebSocketsSansIOProtocol.send (uvicorn/protocols/websockets/x.py:506)"
APP = [
    ([LOOP], 20),
    ([APP_FLUSH, UVICORN_SEND], 30),
    ([APP_FLUSH, "Outbox.put (conversations/replies/outbox.py:175)"], 10),
    (
        [
            "Generation._stream.<locals>.pull (conversations/replies/generation.py:303)",
            "DemoProvider.stream (conversations/llm/demo.py:139)",
        ],
        15,
    ),
    (["sleep (asyncio/tasks.py:649)"], 5),
    (["loop_run (conversations/db.py:154)", "AsyncCursor.execute (psycopg/cursor.py:113)"], 12),
    (["ChatConsumer.receive (x.py:133)", "turn_start (conversations/replies/start.py:160)"], 8),
]
CEILING_FLUSH = "Ceiling.turn.<locals>.flush (bench/ceiling.py:95)"
CEILING = [
    ([LOOP], 18),
    ([CEILING_FLUSH, "Connection.send_data (websockets/asyncio/connection.py:1000)"], 25),
    ([CEILING_FLUSH, "JSONEncoder.encode (json/encoder.py:200)"], 9),
    (["Ceiling.model (bench/ceiling.py:50)", "sleep (asyncio/tasks.py:649)"], 14),
    (["Ceiling.turn (bench/ceiling.py:60)", "JSONEncoder.encode (json/encoder.py:200)"], 4),
]


def _raw(stacks: list[tuple[list[str], int]]) -> str:
    return "".join(
        ";".join(["thread (1): MainThread", *frames]) + f" {count}\n" for frames, count in stacks
    )


def _results(n: int) -> list[dict[str, object]]:
    return [
        {"variant": "uvicorn", "scenario": "ramp", "n": n, "cpu_per_token_us": 25.0},
        {"variant": "ceiling", "scenario": "ramp", "n": n, "cpu_per_token_us": 14.0},
        {"variant": "uvicorn", "scenario": "burst", "n": 250, "cpu_per_token_us": 12.0},
        # --profile also runs the app alone at 300 ramped streams, after the pair.
        {"variant": "uvicorn", "scenario": "ramp", "n": 300, "cpu_per_token_us": 30.0},
    ]


def _rows(lines: list[str]) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1] not in ("uvicorn µs/token", "---"):
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def test_the_app_and_the_ceiling_side_by_side_add_up_to_their_cpu_per_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    (tmp_path / "profile-uvicorn-ramp-1500.txt").write_text(_raw(APP))
    (tmp_path / "profile-ceiling-ramp-1500.txt").write_text(_raw(CEILING))

    lines = run.compare_profiles(_results(1500))

    assert lines[0] == "## Near capacity: the app against the ceiling, 1500 ramped streams"
    rows = _rows(lines)
    assert rows.pop("all") == (25.0, 14.0)
    assert sum(a for a, _ in rows.values()) == pytest.approx(25.0, abs=0.1)
    assert sum(c for _, c in rows.values()) == pytest.approx(14.0, abs=0.1)
    # 12 of the app's 100 samples are its turn's statements; the ceiling has none.
    assert rows["turn: database statements (psycopg, on the loop)"] == (3.0, 0.0)
    # The pacing's sleep counts as the model's, with or without its caller on the stack.
    model = rows["model: the provider's words and their pacing"]
    assert model == pytest.approx((5.0, 14 / 70 * 14.0), abs=0.05)
    send = rows["the server's send() itself (self time: mostly the kernel's write)"]
    assert send == pytest.approx((7.5, 25 / 70 * 14.0), abs=0.05)


def test_no_side_by_side_without_both_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    (tmp_path / "profile-uvicorn-ramp-1500.txt").write_text(_raw(APP))

    assert run.compare_profiles(_results(1500)) == []
