"""The load client: N logged-in sockets, one chat turn each, measured from this process.

Runs in its own process (the harness starts it) on the `websockets` library. It opens every
socket first (so memory per open socket can be read), then starts the turns either all at
once (`--shape burst`) or spread evenly over `--ramp-s` seconds (`--shape ramp`), and reads
every frame. While the turns run, a sampler thread reads the server's RSS from /proc and the
benchmark database's backends from `pg_stat_activity` every 100 ms. The result is one JSON
object on stdout (or `--out`).

With `--cut-after S`, every socket still streaming is cut at once S seconds after the turns
start (the TCP connection aborted, as in a network blip or a load balancer's restart) and
opened again, `--connect-concurrency` handshakes at a time, as the page does: a reply
accepted resumes from the last `seq` it had (`chat.resume`), one not yet accepted is sent
again with the same `client_id`. A reply that ended while its socket was away is answered
`chat.idle`; its saved text is then read from the JSON API, as the page reloads it, and
must begin with the text streamed before the cut.

Every time is taken here, in the client, with `time.perf_counter()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.common import (
    CONNECT_CONCURRENCY,
    children,
    cpu_of,
    percentile,
    proc_memory_kib,
    proc_threads,
)


@dataclass
class Turn:
    index: int
    opened: bool = False
    open_error: str = ""
    t_send: float = 0.0
    t_accepted: float = 0.0
    t_first: float = 0.0
    t_done: float = 0.0
    deltas: list[float] = field(default_factory=list)
    frames: int = 0
    frames_all: int = 0
    status: str = ""
    error: str = ""
    content_ok: bool = False
    seq_ok: bool = True
    # --cut-after: when its socket was cut, when the new one opened, the first frame of the
    # reply after it, and whether the reply had ended meanwhile (answered chat.idle).
    t_cut: float = 0.0
    t_reopened: float = 0.0
    t_back: float = 0.0
    ended_away: bool = False
    replayed: int = 0  # deltas it had before the cut, sent again after it


class Sampler(threading.Thread):
    """Peak server RSS and PostgreSQL backends, sampled every `interval` seconds."""

    def __init__(self, pid: int, pg_dsn: str | None, pg_db: str | None, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.pg_dsn, self.pg_db, self.interval = pid, pg_dsn, pg_db, interval
        self.stop_event = threading.Event()
        self.peak_rss_kib = 0
        self.peak_threads = 0
        self.peak_backends = 0
        self.peak_idle_in_tx = 0
        self.peak_active = 0
        self.peak_tx_age = 0.0
        self.peak_long_tx = 0
        self.last_tx_age = 0.0
        self.last_long_tx = 0
        self.samples = 0
        self.conn: Any = None
        self.own_backend = 0
        if pg_dsn:
            import psycopg

            self.conn = psycopg.connect(pg_dsn, autocommit=True)
            self.own_backend = int(self.conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    def backends(self) -> dict[str, int]:
        """Backends by state; `long_tx` counts transactions open for more than one second."""
        if self.conn is None:
            return {}
        rows = self.conn.execute(
            "SELECT coalesce(state, 'unknown'), count(*), "
            "coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0), "
            "count(*) FILTER (WHERE clock_timestamp() - xact_start > interval '1 second') "
            "FROM pg_stat_activity "
            "WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
            "GROUP BY 1",
            [self.pg_db],
        ).fetchall()
        self.last_tx_age = max((float(age) for _, _, age, _ in rows), default=0.0)
        self.last_long_tx = sum(int(n) for _, _, _, n in rows)
        return {state: n for state, n, _, _ in rows}

    def sample(self) -> None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            self.peak_rss_kib = max(self.peak_rss_kib, proc_memory_kib(self.pid).get("VmRSS", 0))
            self.peak_threads = max(self.peak_threads, proc_threads(self.pid))
        if self.conn is not None:
            counts = self.backends()
            self.peak_backends = max(self.peak_backends, sum(counts.values()))
            self.peak_idle_in_tx = max(
                self.peak_idle_in_tx,
                counts.get("idle in transaction", 0)
                + counts.get("idle in transaction (aborted)", 0),
            )
            self.peak_active = max(self.peak_active, counts.get("active", 0))
            self.peak_tx_age = max(self.peak_tx_age, self.last_tx_age)
            self.peak_long_tx = max(self.peak_long_tx, self.last_long_tx)
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def settle(self, timeout: float = 10.0, quiet: float = 0.5) -> dict[str, int]:
        """Backends once nothing is active or in a transaction and the count holds still."""
        if self.conn is None:
            return {}
        deadline = time.monotonic() + timeout
        last, since = self.backends(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.backends()
            if now != last:
                last, since = now, time.monotonic()
                continue
            busy = sum(n for state, n in now.items() if state != "idle")
            if not busy and time.monotonic() - since >= quiet:
                break
        return last


def db_seconds(metrics_url: str | None) -> dict[str, tuple[float, float]]:
    """chat_turn_db_seconds sum and count per step, from the server's /metrics."""
    if not metrics_url:
        return {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except Exception:
        return {}
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, slot in (("_sum", 0), ("_count", 1)):
            head = f"chat_turn_db_seconds{suffix}{{"
            if line.startswith(head):
                labels, value = line[len(head) :].split("}", 1)
                step = labels.split('step="', 1)[1].split('"', 1)[0]
                out.setdefault(step, [0.0, 0.0])[slot] = float(value)
    return {step: (v[0], v[1]) for step, v in out.items()}


async def open_socket(
    turn: Turn, url: str, origin: str, session: str | None, gate: asyncio.Semaphore
) -> ClientConnection | None:
    headers = [("Origin", origin)]
    if session:
        headers.append(("Cookie", f"sessionid={session}"))
    async with gate:
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                compression=None,
                ping_interval=None,
                open_timeout=60,
                close_timeout=5,
                max_size=2**22,
                max_queue=None,
            )
        except Exception as exc:
            turn.open_error = f"{type(exc).__name__}: {exc}"[:200]
            return None
    turn.opened = True
    return ws


@dataclass
class Cut:
    """`--cut-after`: the moment every live socket is cut, and how to open one again."""

    at: float
    url: str
    origin: str
    gate: asyncio.Semaphore
    sessions: list[str | None]
    live: list[ClientConnection | None]
    turns: list[Turn]

    async def run(self) -> None:
        await asyncio.sleep(max(0.0, self.at - time.perf_counter()))
        for ws, turn in zip(self.live, self.turns, strict=True):
            streaming = turn.t_send and not turn.t_done
            if streaming and ws is not None and ws.transport is not None:
                ws.transport.abort()  # no close handshake: the connection is simply gone

    async def reopen(self, turn: Turn) -> ClientConnection | None:
        session = self.sessions[turn.index]
        ws = await open_socket(turn, self.url, self.origin, session, self.gate)
        self.live[turn.index] = ws
        return ws

    def saved_content(self, turn: Turn, conversation_id: str) -> str | None:
        """The reply as saved, read as the page reloads a conversation (blocking)."""
        http = self.url.replace("ws://", "http://", 1).split("/ws/", 1)[0]
        request = urllib.request.Request(
            f"{http}/api/conversations/{conversation_id}/",
            # As nginx hands it on (deploy/): the server would send plain HTTP to HTTPS.
            headers={
                "Cookie": f"sessionid={self.sessions[turn.index]}",
                "X-Forwarded-Proto": "https",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            messages = json.loads(response.read())["messages"]
        replies = [m for m in messages if m["role"] == "assistant"]
        return replies[-1]["content"] if replies else None


async def run_turn(
    ws: ClientConnection, turn: Turn, start_at: float, timeout: float, cut: Cut | None = None
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    frame = {
        "type": "chat.send",
        "conversation_id": None,
        "persona": None,
        "content": f"Benchmark question number {turn.index}: how do I plan a small project?",
        "client_id": str(uuid.uuid4()),
    }
    texts: list[str] = []
    expected_seq = 1
    conversation_id = ""
    resent = False  # sent again after a cut, before it was accepted
    loads = json.loads
    perf = time.perf_counter
    try:
        async with asyncio.timeout(timeout):
            turn.t_send = perf()
            await ws.send(json.dumps(frame))
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed:
                    if cut is None or turn.t_cut:
                        raise
                    turn.t_cut = perf()
                    reopened = await cut.reopen(turn)
                    if reopened is None:
                        turn.status, turn.error = "failed", "reopen_failed"
                        return
                    ws = reopened
                    turn.t_reopened = perf()
                    if conversation_id:
                        after = expected_seq - 1
                        resume = {"type": "chat.resume", "conversation_id": conversation_id}
                        await ws.send(json.dumps({**resume, "after_seq": after}))
                    else:
                        resent = True
                        await ws.send(json.dumps(frame))  # the same client_id: saved once
                    continue
                now = perf()
                message = loads(raw)
                kind = message.get("type")
                turn.frames_all += 1
                if turn.t_reopened and not turn.t_back and kind != "chat.accepted":
                    turn.t_back = now
                if kind == "chat.delta":
                    if not turn.t_first:
                        turn.t_first = now
                    turn.deltas.append(now)
                    turn.frames += 1
                    seq = message.get("seq")
                    if cut is not None and isinstance(seq, int) and seq < expected_seq:
                        turn.replayed += 1  # had it before the cut: shown once, as the page does
                        continue
                    if seq != expected_seq:
                        turn.seq_ok = False
                    expected_seq += 1
                    texts.append(message.get("text", ""))
                elif kind == "chat.accepted":
                    if not turn.t_accepted:
                        turn.t_accepted = now
                    conversation_id = message.get("conversation_id", "")
                elif kind == "chat.done":
                    turn.t_done = now
                    turn.status = message.get("status", "")
                    content = message.get("content") or ""
                    turn.content_ok = content == "".join(texts) or (
                        # Sent again and found saved: chat.done alone, as a resume answers it.
                        resent and content.startswith("".join(texts))
                    )
                    if turn.status != "complete":
                        turn.error = f"status:{turn.status}"
                    return
                elif kind == "chat.idle" and cut is not None and turn.t_reopened:
                    # It ended while the socket was away: what was saved is the truth.
                    turn.t_done = now
                    turn.ended_away = True
                    saved = await asyncio.to_thread(cut.saved_content, turn, conversation_id)
                    turn.status = "complete" if saved is not None else "lost"
                    turn.content_ok = saved is not None and saved.startswith("".join(texts))
                    if saved is None:
                        turn.error = "lost"
                    return
                elif kind == "chat.error":
                    turn.t_done = now
                    turn.status = "error"
                    turn.error = f"chat.error:{message.get('code')}"
                    if cut is not None and turn.t_cut:
                        turn.error += " after the cut"
                    return
    except TimeoutError:
        turn.status = "timeout"
        turn.error = "timeout"
    except Exception as exc:
        turn.status = "failed"
        turn.error = f"{type(exc).__name__}: {exc}"[:120]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sessions: list[str | None] = [None] * args.n
    if args.sessions_file:
        with open(args.sessions_file) as fh:  # noqa: ASYNC230 (before any socket opens)
            keys = json.loads(fh.read())["sessions"]
        if len(keys) < args.n:
            raise SystemExit(f"only {len(keys)} sessions for {args.n} clients")
        sessions = keys[: args.n]
    ideal = args.words * args.delay_ms / 1000
    # Generous: under overload the point is to measure how late turns finish, not to cut them.
    timeout = args.turn_timeout or (ideal * 15 + args.ramp_s + 30)
    pid = args.server_pid
    sampler = Sampler(pid, args.pg_dsn, args.pg_db) if pid else None

    base_mem = proc_memory_kib(pid) if pid else {}
    base_backends = sampler.settle(timeout=3) if sampler else {}
    db_before = db_seconds(args.metrics_url)

    # Phase 1: open every socket.
    turns = [Turn(i) for i in range(args.n)]
    gate = asyncio.Semaphore(args.connect_concurrency)
    t_open = time.perf_counter()
    sockets = await asyncio.gather(
        *(
            open_socket(t, args.url, args.origin, s, gate)
            for t, s in zip(turns, sessions, strict=False)
        )
    )
    open_seconds = time.perf_counter() - t_open
    await asyncio.sleep(0.5)
    open_mem = proc_memory_kib(pid) if pid else {}
    opened = sum(1 for s in sockets if s is not None)

    # Phase 2: the turns.
    def server_side() -> dict[str, dict[int, float]]:
        """CPU seconds of every server-side process: the server, PostgreSQL's backends
        (the postmaster's children, less this client's own sampling backend), the rest."""
        own = sampler.own_backend if sampler else 0
        pg_pids = [p for p in children(args.postmaster_pid) if p != own]
        return {
            "server": cpu_of([pid] + (children(pid) if pid else [])) if pid else {},
            "postgres": cpu_of(pg_pids) if args.postmaster_pid else {},
            "other": cpu_of(args.extra_pid),
        }

    client_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    side0 = server_side()
    if sampler:
        sampler.sample()
        sampler.start()
    print("TURNS_START", file=sys.stderr, flush=True)
    t0 = time.perf_counter() + 0.2
    step = args.ramp_s / args.n if args.shape == "ramp" and args.n > 1 else 0.0
    live = list(sockets)
    cut = (
        Cut(t0 + args.cut_after, args.url, args.origin, gate, sessions, live, turns)
        if args.cut_after > 0
        else None
    )
    cutter = asyncio.ensure_future(cut.run()) if cut is not None else None
    await asyncio.gather(
        *(
            run_turn(ws, turn, t0 + turn.index * step, timeout, cut)
            for ws, turn in zip(sockets, turns, strict=False)
            if ws is not None
        )
    )
    t_end = time.perf_counter()
    if cutter is not None:
        cutter.cancel()
    sockets = live
    side1 = server_side()
    # A process born during the turns counts from zero; one gone meanwhile is lost.
    side = {
        part: sum(v - side0[part].get(p, 0.0) for p, v in side1[part].items()) for part in side1
    }
    server_cpu = side["server"]
    whole_cpu = sum(side.values())
    client_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if sampler:
        sampler.stop_event.set()
        sampler.join()
        sampler.sample()
    end_mem = proc_memory_kib(pid) if pid else {}
    after_backends = sampler.settle() if sampler else {}
    db_after = db_seconds(args.metrics_url)

    await asyncio.gather(*(ws.close() for ws in sockets if ws is not None), return_exceptions=True)

    # Aggregate.
    delay = args.delay_ms / 1000
    done = [t for t in turns if t.status == "complete" and t.content_ok and t.seq_ok]
    errors: dict[str, int] = {}
    for t in turns:
        reason = (
            (t.open_error and "open_failed")
            or t.error
            or (not t.content_ok and "content_mismatch")
            or (not t.seq_ok and "seq_gap")
            or ""
        )
        if reason:
            errors[reason] = errors.get(reason, 0) + 1
    completion = [t.t_done - t.t_send for t in done]
    ttft = [t.t_first - t.t_send for t in turns if t.t_first]
    accepted = [t.t_accepted - t.t_send for t in turns if t.t_accepted]
    gaps = [b - a for t in done for a, b in zip(t.deltas, t.deltas[1:], strict=False)]
    frames = sum(t.frames for t in turns)
    frames_all = sum(t.frames_all for t in turns)
    tokens = len(done) * args.words
    first_send = min((t.t_send for t in turns if t.t_send), default=t0)
    wall = t_end - first_send
    db_steps = {}
    for step_name, (total, count) in db_after.items():
        before_total, before_count = db_before.get(step_name, (0.0, 0.0))
        if count - before_count > 0:
            db_steps[step_name] = (total - before_total) / (count - before_count)
    cut_turns = [t for t in turns if t.t_cut]
    # From the cut to the reply's next frame (a delta, its chat.done, or chat.idle).
    back = [t.t_back - t.t_cut for t in cut_turns if t.t_back]
    reopened = [t.t_reopened - t.t_cut for t in cut_turns if t.t_reopened]
    cpu_client = (client_cpu1.ru_utime - client_cpu0.ru_utime) + (
        client_cpu1.ru_stime - client_cpu0.ru_stime
    )
    result: dict[str, Any] = {
        "n": args.n,
        "shape": args.shape,
        "ramp_s": args.ramp_s if args.shape == "ramp" else 0,
        "words": args.words,
        "delay_ms": args.delay_ms,
        "ideal_s": ideal,
        "opened": opened,
        "open_s": open_seconds,
        "completed": len(done),
        "errors": errors,
        "open_error_sample": next((t.open_error for t in turns if t.open_error), ""),
        "error_count": sum(errors.values()),
        "completion_p50_s": percentile(completion, 50),
        "completion_p99_s": percentile(completion, 99),
        "completion_max_s": max(completion, default=float("nan")),
        "ttft_p50_ms": percentile(ttft, 50) * 1000,
        "ttft_p99_ms": percentile(ttft, 99) * 1000,
        "ttft_added_p50_ms": (percentile(ttft, 50) - delay) * 1000,
        "ttft_added_p99_ms": (percentile(ttft, 99) - delay) * 1000,
        "accepted_p50_ms": percentile(accepted, 50) * 1000,
        "accepted_p99_ms": percentile(accepted, 99) * 1000,
        "gap_p50_ms": percentile(gaps, 50) * 1000,
        "gap_p99_ms": percentile(gaps, 99) * 1000,
        "gap_max_ms": max(gaps, default=float("nan")) * 1000,
        "frames": frames,
        "tokens": tokens,
        "wall_s": wall,
        "frames_per_s": frames / wall if wall > 0 else float("nan"),
        "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "server_cpu_s": server_cpu,
        "cpu_per_token_us": server_cpu / tokens * 1e6 if tokens else float("nan"),
        "frames_all": frames_all,
        "frames_per_token": frames / tokens if tokens else float("nan"),
        "pg_cpu_s": side["postgres"] if args.postmaster_pid else float("nan"),
        "other_cpu_s": side["other"],
        "whole_cpu_s": whole_cpu,
        "whole_cpu_per_token_us": whole_cpu / tokens * 1e6 if tokens else float("nan"),
        "whole_cpu_per_frame_us": whole_cpu / frames_all * 1e6 if frames_all else float("nan"),
        "client_cpu_s": cpu_client,
        "rss_base_kib": base_mem.get("VmRSS", 0),
        "rss_open_kib": open_mem.get("VmRSS", 0),
        "rss_peak_kib": max(end_mem.get("VmHWM", 0), sampler.peak_rss_kib if sampler else 0),
        "mem_per_socket_kib": (
            (open_mem.get("VmRSS", 0) - base_mem.get("VmRSS", 0)) / opened if opened else 0
        ),
        "server_threads_peak": sampler.peak_threads if sampler else 0,
        "pg_backends_base": base_backends,
        "pg_backends_peak": sampler.peak_backends if sampler else 0,
        "pg_active_peak": sampler.peak_active if sampler else 0,
        "pg_idle_in_tx_peak": sampler.peak_idle_in_tx if sampler else 0,
        "pg_tx_age_max_ms": sampler.peak_tx_age * 1000 if sampler else 0,
        "pg_long_tx_peak": sampler.peak_long_tx if sampler else 0,
        "pg_backends_after": after_backends,
        "db_ms_per_turn": {k: v * 1000 for k, v in db_steps.items()},
        "cut_after_s": args.cut_after,
        "cut": len(cut_turns),
        "cut_ended_away": sum(1 for t in cut_turns if t.ended_away),
        "cut_replayed_frames": sum(t.replayed for t in cut_turns),
        "cut_back_p50_ms": percentile(back, 50) * 1000,
        "cut_back_p99_ms": percentile(back, 99) * 1000,
        "cut_back_max_ms": max(back, default=float("nan")) * 1000,
        "cut_reopen_p99_ms": percentile(reopened, 99) * 1000,
        "cut_reopen_all_s": (
            max(t.t_reopened for t in cut_turns if t.t_reopened) - min(t.t_cut for t in cut_turns)
            if reopened
            else float("nan")
        ),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--sessions-file")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--shape", choices=["burst", "ramp"], default="ramp")
    parser.add_argument("--ramp-s", type=float, default=5.0)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--turn-timeout", type=float, default=0)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--pg-dsn")
    parser.add_argument("--pg-db")
    parser.add_argument("--metrics-url")
    parser.add_argument("--postmaster-pid", type=int, default=0, help="its children's CPU counts")
    parser.add_argument("--extra-pid", type=int, action="append", default=[], help="Redis, nginx")
    parser.add_argument("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY)
    parser.add_argument(
        "--cut-after",
        type=float,
        default=0.0,
        help="cut every live socket this many seconds after the turns start, then reopen and "
        "resume (0: no cut)",
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
