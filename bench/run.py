"""The benchmark harness: `make bench` (full) and `make bench-smoke` (correctness only).

    python -m bench.run                 # full matrix + capacity search -> bench/results/
    python -m bench.run --smoke         # ~30 s: all turns complete, no errors, backends back
    python -m bench.run --levels 50,250 --variants ceiling,daphne   # a slice
    python -m bench.run --profile       # py-spy under the 250-client burst -> results/profile.md

For every (variant, scenario, N) it starts a fresh server process, warms it with one turn,
then runs the load client (bench/client.py) in a separate process. Every time is measured
in the client; server CPU and RSS come from /proc/<pid>; PostgreSQL backends from
pg_stat_activity. Each figure is also given as a ratio against the ceiling (a bare
`websockets` server, bench/ceiling.py) measured in the same run.

Variants (headline rows are "daphne" and "uvicorn": the shipped code, the shipped defaults):
  ceiling          bare websockets on uvloop (Uvicorn's loop): same words, pace, coalescing
                   rule and frames; no Django/DB/layer (bench/ceiling.py)
  ceiling-asyncio  the same on the stock asyncio loop (Daphne's)
  daphne           the project as shipped, served by Daphne (in-memory channel layer)
  uvicorn          the project as shipped, served by Uvicorn (uvloop + httptools, websockets-sansio)
  daphne-shared-thread / uvicorn-shared-thread   a shipped setting toggled: DB_CALL_THREADS=0
                   (the turn's db calls on Channels' one shared thread)
  daphne-redis     the project with the Redis channel layer (REDIS_URL, a shipped setting)
  before           the seed's design, the labelled historical baseline: a transaction held
                   across the stream (bench/before_app.py)
  before-nopool    the same without Django's pool: one backend per stream (private cluster only)
  ceiling-pertoken / daphne-pertoken   coalescing off (STREAM_COALESCE_MS=0), for comparison
  uvicorn-redis    one Uvicorn worker with the Redis channel layer and reply log (REDIS_URL)
  uvicorn-2workers scale-out: two Uvicorn workers behind nginx (deploy/nginx-proxy.conf's
                   locations), REDIS_URL set; CPU summed over both workers, nginx, Redis, PG
  uvicorn-pgbouncer one Uvicorn worker behind PgBouncer in transaction pooling mode
                   (DB_PGBOUNCER=true); PgBouncer's CPU counts
  <variant>@<rev>  any Django variant serving `git archive <rev>` (the code before a lever),
                   e.g. --variants uvicorn,uvicorn@HEAD~1: the same run, interleaved
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import pg, topology
from bench.common import CONNECT_CONCURRENCY, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
SECRET = "bench-secret-key-not-for-production-0123456789abcdef"
POOL_MAX = 10
# The turns' own connections on the event loop (DB_CALL_THREADS's shipped 4), beside the pool.
LOOP_CONNECTIONS = 4


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str  # burst | ramp
    words: int
    delay_ms: float
    ramp_s: float = 0.0
    coalesce_ms: int = 40
    cut_s: float = 0.0  # every streaming socket cut this long after the start, then resumed

    @property
    def ideal_s(self) -> float:
        return self.words * self.delay_ms / 1000


RAMP = Scenario("ramp", "ramp", words=200, delay_ms=20, ramp_s=5.0)  # 200 words at 50/s
BURST = Scenario("burst", "burst", words=500, delay_ms=10)  # 500 words at 100/s, all at once
PERTOKEN = Scenario("burst-pertoken", "burst", words=500, delay_ms=10, coalesce_ms=0)
# What a turn itself costs, beside the words it streams: replies of two words, all at once.
TURNS = Scenario("turns", "burst", words=2, delay_ms=10)
SMOKE = Scenario("smoke", "burst", words=20, delay_ms=10)
# A reconnect storm: the ramp, with every socket still streaming cut at once 5.5 s in, after
# the last arrival (new turns arriving meanwhile made the figures swing from run to run),
# reopened 64 handshakes at a time and resumed, as pages do.
STORM = Scenario("storm", "ramp", words=200, delay_ms=20, ramp_s=5.0, cut_s=5.5)
# The smoke's storm: every socket cut half-way through its one-second reply.
SMOKE_STORM = Scenario("smoke-storm", "burst", words=40, delay_ms=25, cut_s=0.5)

APP = "chatproject.asgi:application"
# The shipped defaults of the settings the bench may change (chatproject/settings.py). A run
# that sets one to anything else prints it in results.md's header, per variant.
SHIPPED = {
    "DB_CALL_THREADS": "4 (at most DB_POOL_MAX_SIZE)",
    "DB_POOL_MAX_SIZE": str(POOL_MAX),
    "MAX_GENERATIONS_PER_WORKER": "200",
    "MAX_GENERATIONS_PER_USER": "3",
    "STREAM_COALESCE_MS": "40",
    "DEMO_TOKEN_DELAY_MS": "30",
    "DEMO_REPLY_WORDS": "0 (the reply's own length)",
    "REDIS_URL": "unset (in-memory layer)",
    "DB_POOL": "true",
    "DB_PGBOUNCER": "false",
}

# variant -> (kind, ASGI app or None, extra env: shipped settings toggled)
VARIANTS: dict[str, tuple[str, str | None, dict[str, str]]] = {
    "ceiling": ("ceiling", None, {"loop": "uvloop"}),
    "ceiling-asyncio": ("ceiling", None, {"loop": "asyncio"}),
    "daphne": ("daphne", APP, {}),
    "uvicorn": ("uvicorn", APP, {}),
    "daphne-shared-thread": ("daphne", APP, {"DB_CALL_THREADS": "0"}),
    "uvicorn-shared-thread": ("uvicorn", APP, {"DB_CALL_THREADS": "0"}),
    "daphne-redis": ("daphne", APP, {"REDIS_URL": "redis"}),
    "before": ("daphne", "bench.before_app:application", {}),
    "before-nopool": ("daphne", "bench.before_app:application", {"DB_POOL": "false"}),
    "ceiling-pertoken": ("ceiling", None, {"loop": "uvloop"}),
    "daphne-pertoken": ("daphne", APP, {}),
    # Scale-out. `workers` and `pgbouncer` are the harness's, not settings: what stands around
    # the server (bench/topology.py).
    "uvicorn-redis": ("uvicorn", APP, {"REDIS_URL": "redis"}),
    "uvicorn-2workers": ("uvicorn", APP, {"REDIS_URL": "redis", "workers": "2"}),
    "uvicorn-pgbouncer": ("uvicorn", APP, {"DB_PGBOUNCER": "true", "pgbouncer": "transaction"}),
}
HEADLINE = ("daphne", "uvicorn")
# What each variant is, for results.md's header.
DESCRIBE = {
    "ceiling": "bare `websockets` on uvloop: the same words, pace, coalescing and frames; "
    "no Django, database or layer",
    "ceiling-asyncio": "the ceiling on the stock asyncio loop (Daphne's)",
    "daphne": "the shipped code and defaults, one Daphne process, in-memory channel layer",
    "uvicorn": "the shipped code and defaults, one Uvicorn process (uvloop, httptools, "
    "websockets-sansio), in-memory channel layer",
    "daphne-shared-thread": "Daphne with DB_CALL_THREADS=0",
    "uvicorn-shared-thread": "Uvicorn with DB_CALL_THREADS=0",
    "daphne-redis": "Daphne with REDIS_URL (Redis channel layer and reply log); Redis's CPU counts",
    "uvicorn-redis": "one Uvicorn worker with REDIS_URL (Redis channel layer and reply log); "
    "Redis's CPU counts",
    "uvicorn-2workers": "scale-out: two Uvicorn workers behind nginx (one nginx worker, "
    "deploy/nginx-proxy.conf's locations, least_conn upstream, plain HTTP), REDIS_URL set; "
    "all on core 0; CPU summed over both workers, nginx, Redis and PostgreSQL",
    "uvicorn-pgbouncer": "one Uvicorn worker behind PgBouncer in transaction pooling mode "
    "(DB_PGBOUNCER=true; PgBouncer's pool: {pgbouncer_pool} server connections); "
    "PgBouncer's CPU counts",
    "before": "the seed's design, the labelled historical baseline (bench/before_app.py)",
    "before-nopool": "the seed's design without Django's pool",
    "ceiling-pertoken": "the ceiling with coalescing off",
    "daphne-pertoken": "Daphne with coalescing off (STREAM_COALESCE_MS=0)",
}


def describe(variant: str, pgbouncer_pool: int = POOL_MAX) -> str:
    base, _, rev = variant.partition("@")
    text = DESCRIBE.get(base, "?").replace("{pgbouncer_pool}", str(pgbouncer_pool))
    return f"{base} serving the code at {rev} (`git archive {rev}`): {text}" if rev else text


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, from `BENCH_PORTS` when set: free_port() twice in a row
    gives the same one."""
    lo, _, hi = os.environ.get("BENCH_PORTS", "").partition("-")
    candidates: Any = range(int(lo), int(hi or lo) + 1) if lo else [0] * count
    held: list[socket.socket] = []
    try:
        for port in candidates:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                return [int(s.getsockname()[1]) for s in held]
        raise RuntimeError(f"fewer than {count} free ports in BENCH_PORTS")
    finally:
        for sock in held:
            sock.close()


def pinned(argv: list[str], core: int) -> list[str]:
    """`taskset -c core` in front of argv where the machine has two cores or more."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


@dataclass
class Plan:
    runs: list[tuple[str, Scenario, int]] = field(default_factory=list)

    def add(self, variants: list[str], scenario: Scenario, levels: list[int]) -> None:
        for n in levels:
            for variant in variants:
                self.runs.append((variant, scenario, n))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.database_url = ""
        self.redis_url = args.redis_url
        self.sessions_file = RESULTS / ".sessions.json"
        self.logs = RESULTS / "logs"
        self.cluster: pg.PrivateCluster | None = None
        self.problems: list[str] = []
        self.src = ROOT
        self.snapshot_dir = ""
        self.source_text = ""
        self.revisions: dict[str, topology.Revision] = {}

    def source(self) -> str:
        """The commit served, and how many files differed from it (read-only git)."""
        try:
            head = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
        except (OSError, subprocess.CalledProcessError):
            return "unknown (no git)"
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M UTC")
        return f"commit {head} + {len(dirty)} modified tracked files, copied at {stamp}"

    def take_snapshot(self) -> None:
        """Serve a frozen copy of the tree, so edits made during a long run change nothing."""
        import tempfile

        self.source_text = self.source()
        self.snapshot_dir = tempfile.mkdtemp(prefix="bench-src-")
        self.src = Path(self.snapshot_dir) / "src"
        shutil.copytree(
            ROOT,
            self.src,
            ignore=shutil.ignore_patterns(
                ".venv",
                ".git",
                "results",
                "test-output",
                "staticfiles",
                "node_modules",
                "*.sqlite3",
                "__pycache__",
                ".*_cache",
            ),
        )

    def drop_snapshot(self) -> None:
        if self.snapshot_dir:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            self.snapshot_dir = ""
            self.src = ROOT

    # --- setup ---------------------------------------------------------------------------

    def start_database(self, users: int) -> None:
        if self.args.pg == "private":
            if not pg.PrivateCluster.available():
                print("bench: no initdb/postgres user here; using the shared server", flush=True)
                self.args.pg = "shared"
            else:
                self.cluster = pg.PrivateCluster(free_port())
                self.cluster.start()
                self.database_url = self.cluster.url("bench_chat")
        if self.args.pg == "shared":
            self.database_url = self.args.database_url
        env = self.base_env(SMOKE)
        began = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.prepare",
                "--users",
                str(users),
                "--out",
                str(self.sessions_file),
            ],
            cwd=self.src,
            env=env,
            check=True,
        )
        print(f"bench: database ready in {time.monotonic() - began:.1f}s", flush=True)

    def stop_database(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def base_env(self, scenario: Scenario, n: int = 1) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DB_", "DEMO_", "REDIS", "STREAM_", "MAX_", "GC_"))
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "chatproject.settings",
                "DATABASE_URL": self.database_url,
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": SECRET,
                # The client reads chat_turn_db_seconds from /metrics without a token.
                "METRICS_PUBLIC": "true",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "LLM_PROVIDER": "demo",
                "DEMO_TOKEN_DELAY_MS": str(int(scenario.delay_ms)),
                "DEMO_REPLY_WORDS": str(scenario.words),
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if scenario.coalesce_ms != 40:
            env["STREAM_COALESCE_MS"] = str(scenario.coalesce_ms)
        if n > 200:
            # The shipped cap answers `busy` past 200 streams a worker: lifted, and printed.
            env["MAX_GENERATIONS_PER_WORKER"] = str(n + 10)
        return env

    @staticmethod
    def overrides(env: dict[str, str]) -> dict[str, str]:
        """The settings this run sets away from the shipped defaults."""
        return {k: env[k] for k in SHIPPED if k in env and env[k] != SHIPPED[k]}

    # --- one run -------------------------------------------------------------------------

    def server_argv(
        self, kind: str, app: str | None, port: int, scenario: Scenario, loop: str
    ) -> list[str]:
        if kind == "ceiling":
            return [
                sys.executable,
                "-m",
                "bench.ceiling",
                "--port",
                str(port),
                "--delay-ms",
                str(scenario.delay_ms),
                "--words",
                str(scenario.words),
                "--coalesce-ms",
                str(scenario.coalesce_ms),
                "--loop",
                loop,
            ]
        assert app is not None
        if kind == "daphne":
            return [str(BIN / "daphne"), "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]
        return [
            str(BIN / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            self.args.uvicorn_ws,
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
        ]

    def resolve(self, variant: str) -> tuple[str, str | None, dict[str, str], Any]:
        """kind, app, extra env and the older tree (or None) of `variant` or `variant@rev`."""
        base, _, rev = variant.partition("@")
        kind, app, extra = VARIANTS[base]
        if not rev:
            return kind, app, extra, None
        if kind == "ceiling":
            raise SystemExit(f"{variant}: only the app's variants may be pinned to a revision")
        if rev not in self.revisions:
            self.revisions[rev] = topology.checkout(ROOT, rev)
        return kind, app, extra, self.revisions[rev]

    def drop_revisions(self) -> None:
        for revision in self.revisions.values():
            revision.drop()
        self.revisions.clear()

    def start_server(
        self,
        kind: str,
        app: str | None,
        ports: list[int],
        scenario: Scenario,
        loop: str,
        src: Path,
        env: dict[str, str],
        log: Any,
    ) -> subprocess.Popen[Any]:
        """One server process, or for several workers a shell whose children they are (so the
        client's `--server-pid` sums their CPU), all pinned to core 0."""
        if len(ports) == 1:
            argv = self.server_argv(kind, app, ports[0], scenario, loop)
        else:
            lines = [
                f"{shlex.join(self.server_argv(kind, app, p, scenario, loop))} & w{i}=$!"
                for i, p in enumerate(ports)
            ]
            pids = " ".join(f"$w{i}" for i in range(len(ports)))
            script = "\n".join([f"trap 'kill {pids} 2>/dev/null; wait' TERM INT", *lines, "wait"])
            argv = ["sh", "-c", script]
        return subprocess.Popen(
            pinned(argv, 0),
            cwd=src,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run_one(self, variant: str, scenario: Scenario, n: int, repeat: int = 0) -> dict[str, Any]:
        kind, app, extra, revision = self.resolve(variant)
        extra = dict(extra)
        loop = extra.pop("loop", "asyncio")
        workers = int(extra.pop("workers", "1"))
        pooler = extra.pop("pgbouncer", "")
        src = revision.path if revision is not None else self.src
        # Workers, then PgBouncer and nginx where the variant has them.
        ports = free_ports(workers + 2)
        env = self.base_env(scenario, n)
        env.update(extra)
        extra_pids: list[int] = []
        if env.get("REDIS_URL") == "redis":
            env["REDIS_URL"] = self.redis_url
            topology.flush_redis(self.redis_url)
            if pid := topology.redis_pid(self.redis_url):
                extra_pids.append(pid)
        django = kind != "ceiling"
        if django:
            pg.truncate_conversations(self.database_url)
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{variant.replace('/', '_')}-{scenario.name}-{n}-{repeat}.log"
        began = time.monotonic()
        helpers: list[topology.Daemon] = []
        server: subprocess.Popen[Any] | None = None
        with open(log_path, "w") as log:
            try:
                if pooler:
                    bouncer = topology.start_pgbouncer(
                        self.database_url, ports[workers], self.args.pgbouncer_pool
                    )
                    helpers.append(bouncer)
                    env["DATABASE_URL"] = topology.behind(self.database_url, bouncer.port)
                server = self.start_server(
                    kind, app, ports[:workers], scenario, loop, src, env, log
                )
                for worker_port in ports[:workers]:
                    wait_port(worker_port, timeout=60)
                port = ports[0]
                if workers > 1:
                    front = topology.start_nginx(
                        src, ports[workers + 1], ports[:workers], pinned([], 0)
                    )
                    helpers.append(front)
                    port = front.port
                client_base = [
                    *pinned([sys.executable], 1),
                    "-m",
                    "bench.client",
                    "--url",
                    f"ws://127.0.0.1:{port}/ws/chat/",
                    "--origin",
                    f"http://127.0.0.1:{port}",
                    "--words",
                    str(scenario.words),
                    "--delay-ms",
                    str(scenario.delay_ms),
                    "--shape",
                    scenario.shape,
                    "--ramp-s",
                    str(scenario.ramp_s),
                ]
                if scenario.cut_s:
                    client_base += ["--cut-after", str(scenario.cut_s)]
                if django:
                    client_base += ["--sessions-file", str(self.sessions_file)]
                    # Warm up: one full turn, so imports and the pool's first connection
                    # are not in the measurement.
                    for _ in range(workers):  # least_conn: one turn each, one at a time
                        warm = subprocess.run(
                            [*client_base, "--n", "1"],
                            cwd=self.src,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=scenario.ideal_s * 4 + 60,
                        )
                        if warm.returncode != 0 or '"completed": 1' not in warm.stdout:
                            raise RuntimeError(f"warm-up turn failed: {warm.stdout}{warm.stderr}")
                argv = [
                    *client_base,
                    "--n",
                    str(n),
                    "--server-pid",
                    str(server.pid),
                    "--pg-dsn",
                    pg.admin_dsn(self.database_url),
                    "--pg-db",
                    pg.dbname(self.database_url),
                ]
                if django and self.cluster is not None and self.cluster.postmaster_pid():
                    # PostgreSQL's CPU counts only on the private cluster (nobody else's).
                    argv += ["--postmaster-pid", str(self.cluster.postmaster_pid())]
                if django:
                    # One worker's: the database time per turn step is an average anyway.
                    argv += ["--metrics-url", f"http://127.0.0.1:{ports[0]}/metrics"]
                for pid in [*extra_pids, *(p for h in helpers for p in h.pids())]:
                    argv += ["--extra-pid", str(pid)]
                budget = scenario.ideal_s * 15 + scenario.ramp_s + 30 + n / 20 + 90
                result = self.run_client(argv, env, budget, server.pid, variant, scenario, n)
            finally:
                if server is not None:
                    self.stop_server(server)
                for helper in reversed(helpers):
                    helper.stop()
        after_stop = pg.backends_gone(self.database_url) if django else {}
        result.update(
            {
                "variant": variant,
                "repeat": repeat,
                "overrides": self.overrides(env),
                "loop": loop
                if kind == "ceiling"
                else ("uvloop" if kind == "uvicorn" else "asyncio"),
                "pinned": pinned(["x"], 0) != ["x"],
                "scenario": scenario.name,
                "coalesce_ms": scenario.coalesce_ms,
                "pg_backends_after_stop": after_stop,
                "source": revision.label if revision else (self.source_text or self.source()),
                "description": describe(variant, self.args.pgbouncer_pool),
                "workers": workers,
                "run_s": time.monotonic() - began,
                "ended_at": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            }
        )
        return result

    def run_client(
        self,
        argv: list[str],
        env: dict[str, str],
        budget: float,
        server_pid: int,
        variant: str,
        scenario: Scenario,
        n: int,
    ) -> dict[str, Any]:
        profiler: subprocess.Popen[bytes] | None = None
        profile_out = RESULTS / f"profile-{variant}-{scenario.name}-{n}.txt"
        want_profile = self.args.profile and (variant, scenario.name, n) in self.profile_targets()
        out_path = self.logs / f"client-{variant}-{scenario.name}-{n}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.unlink(missing_ok=True)
        client = subprocess.Popen(
            [*argv, "--out", str(out_path)],
            cwd=self.src,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def watch_stderr() -> None:
            nonlocal profiler
            assert client.stderr is not None
            for line in client.stderr:
                if line.startswith("TURNS_START") and want_profile and profiler is None:
                    profiler = subprocess.Popen(
                        [
                            str(BIN / "py-spy"),
                            "record",
                            "--pid",
                            str(server_pid),
                            "--rate",
                            "200",
                            "--duration",
                            # A thousand short turns outlast their ideal: 10 s covers them.
                            str(max(10, int(scenario.ideal_s + scenario.ramp_s + 2))),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--gil",
                            "--threads",
                            "--output",
                            str(profile_out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                elif not line.startswith("TURNS_START"):
                    sys.stderr.write(f"  client: {line}")

        watcher = threading.Thread(target=watch_stderr, daemon=True)
        watcher.start()
        try:
            client.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            raise RuntimeError(f"the load client ran past {budget:.0f}s") from None
        watcher.join(timeout=5)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=60)
        if client.returncode != 0:
            raise RuntimeError(f"the load client failed with exit code {client.returncode}")
        return dict(json.loads(out_path.read_text()))

    def stop_server(self, server: subprocess.Popen[Any]) -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        # Several workers: the shell is gone, and so must be every process of its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)

    def profile_targets(self) -> set[tuple[str, str, int]]:
        burst = {(v, "burst", 250) for v in HEADLINE}
        near_capacity = {(v, "ramp", self.args.profile_ramp) for v in ("uvicorn", "ceiling")}
        return burst | near_capacity | {("uvicorn", "ramp", 300), ("uvicorn", "turns", 1000)}


# --- reporting -------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "–"
    return f"{value / base:.2f}×"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    versions = []
    for module in ("django", "channels", "daphne", "uvicorn", "websockets", "psycopg"):
        with contextlib.suppress(Exception):
            versions.append(f"{module} {__import__(module).__version__}")
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


def median(values: list[float]) -> float:
    clean = sorted(v for v in values if v is not None and not math.isnan(v))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def spread(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    """Median, min and max of one figure over the repeats."""
    values = [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    if not values:
        return math.nan, math.nan, math.nan
    return median(values), min(values), max(values)


def fmt_spread(rows: list[dict[str, Any]], key: str, digits: int = 1, scale: float = 1) -> str:
    mid, lo, hi = spread(rows, key)
    if math.isnan(mid):
        return "–"
    if len(rows) == 1 or lo == hi:
        return fmt(mid * scale, digits)
    return f"{fmt(mid * scale, digits)} ({fmt(lo * scale, digits)}–{fmt(hi * scale, digits)})"


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> str:
    """Lower, higher or a tie for a against b: overlapping ranges are a tie."""
    _, alo, ahi = spread(a, key)
    _, blo, bhi = spread(b, key)
    if any(math.isnan(x) for x in (alo, ahi, blo, bhi)):
        return "–"
    if ahi < blo:
        return "lower"
    if bhi < alo:
        return "higher"
    return "tie (ranges overlap)"


def grouped(results: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault((r["variant"], r["scenario"], r["n"]), []).append(r)
    return out


def measured_line(results: list[dict[str, Any]]) -> str:
    """When the runs ended (not when the report was written: `--report-only` rewrites it)."""
    ended = sorted(r["ended_at"] for r in results if r.get("ended_at"))
    now = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    if not ended:
        return f"Report written {now} UTC, from runs whose time was not recorded, on: {machine()}."
    return f"Measured {ended[0]}–{ended[-1]} UTC on: {machine()}."


def write_report(results: list[dict[str, Any]], notes: list[str], elapsed: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw.json").write_text(json.dumps(results, indent=1))
    groups = grouped(results)
    repeats = max((len(g) for g in groups.values()), default=0)
    pinned_txt = (
        "the server pinned to core 0 and the load client to core 1 (`taskset -c`)"
        if any(r.get("pinned") for r in results)
        else "no pinning (fewer than 2 cores or no taskset)"
    )
    # setting -> value -> where: whole scenarios when every run of one has it, else the runs.
    overrides: dict[str, dict[str, list[str]]] = {}
    for key in dict.fromkeys(k for r in results for k in r.get("overrides") or {}):
        values = dict.fromkeys((r.get("overrides") or {}).get(key) for r in results)
        for value in values:
            if value is None:
                continue
            where: list[str] = []
            for scenario in dict.fromkeys(r["scenario"] for r in results):
                runs = [r for r in results if r["scenario"] == scenario]
                has = [r for r in runs if (r.get("overrides") or {}).get(key) == value]
                if has and len(has) == len(runs):
                    where.append(f"every {scenario} run")
                else:
                    where += dict.fromkeys(f"{r['variant']} {scenario} N={r['n']}" for r in has)
            overrides.setdefault(key, {})[value] = where
    lines = [
        "# Streaming benchmark",
        "",
        measured_line(results),
        "",
        'One server process (the scale-out variants: as their line under "Variants" says), '
        + pinned_txt
        + ". Times are measured in the client. Each figure is the median of "
        f"{repeats} repeat(s), interleaved between variants, with the min–max in brackets; "
        "a comparison whose ranges overlap is a tie. Ratios (×) are medians against the "
        "ceiling measured in the same run at the same N (bare `websockets`, same words, pace, "
        "coalescing rule, frames and event loop). `TTFT+` is the time to the first delta minus "
        "the model's own first-word delay. `CPU/token` is the server process alone; `all "
        "CPU/token` and `all CPU/frame` count every server-side process (the worker, the "
        "private PostgreSQL cluster's backends, Redis, nginx and PgBouncer where the variant "
        "has them; Redis is the machine's own, so others' use of it counts too); the client's "
        "CPU is apart. Every socket opens before the turns begin, and the figures above count "
        "the turns only; `open s` is the time the client took to open all N sockets first, "
        f"{CONNECT_CONCURRENCY} handshakes at a time (as pages reconnect after a restart).",
        "",
        "Headline rows `daphne` and `uvicorn` serve the shipped code with the shipped "
        "defaults. Settings this run changed from the shipped defaults "
        "(chatproject/settings.py):",
        "",
    ]
    for key, by_value in sorted(overrides.items()):
        shipped = SHIPPED.get(key, "?")
        for value, where in by_value.items():
            lines.append(f"- `{key}={value}` (shipped: {shipped}): " + ", ".join(where))
    if not overrides:
        lines.append("- none")
    sources: dict[str, list[str]] = {}
    for r in results:
        sources.setdefault(str(r.get("source", "not recorded")), []).append(r["variant"])
    lines += ["", "Source served:", ""]
    for source, variants in sources.items():
        pinned_to = [v for v in dict.fromkeys(variants) if "@" in v]
        lines.append(f"- {', '.join(pinned_to)}: {source}" if pinned_to else f"- {source}")
    lines += ["", "Variants in this run:", ""]
    for variant in dict.fromkeys(r["variant"] for r in results):
        row = next(r for r in results if r["variant"] == variant)
        lines.append(f"- `{variant}`: {row.get('description') or describe(variant)}")
    lines.append("")
    columns = [
        ("compl. p99 s", "completion_p99_s", 2, 1),
        ("TTFT+ p50 ms", "ttft_added_p50_ms", 0, 1),
        ("TTFT+ p99 ms", "ttft_added_p99_ms", 0, 1),
        ("accepted p99 ms", "accepted_p99_ms", 0, 1),
        ("gap p99 ms", "gap_p99_ms", 0, 1),
        ("frames/token", "frames_per_token", 2, 1),
        ("CPU/token µs", "cpu_per_token_us", 0, 1),
        ("all CPU/token µs", "whole_cpu_per_token_us", 0, 1),
        ("all CPU/frame µs", "whole_cpu_per_frame_us", 0, 1),
        ("PG CPU s", "pg_cpu_s", 2, 1),
        ("Redis/nginx/PgBouncer CPU s", "other_cpu_s", 2, 1),
        ("client CPU s", "client_cpu_s", 1, 1),
        ("open s", "open_s", 2, 1),
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        first = next(r for r in results if r["scenario"] == scenario)
        desc = (
            f"{first['words']} words at {1000 / first['delay_ms']:.0f}/s "
            f"(ideal {first['ideal_s']:.1f} s), "
            + (
                f"arrivals spread over {first['ramp_s']:.0f} s"
                if first["shape"] == "ramp"
                else "all clients at once"
            )
            + (", coalescing off" if first.get("coalesce_ms") == 0 else "")
            + (
                f"; every socket still streaming cut at once {first['cut_after_s']:.1f} s in, "
                "then reopened 64 handshakes at a time and resumed from its last seq"
                if first.get("cut_after_s")
                else ""
            )
        )
        lines += [
            f"## {scenario}: {desc}",
            "",
            "| variant | N | ok / err (all repeats) | p99 × ideal | p99 × ceil | "
            + " | ".join(c[0] for c in columns)
            + " | CPU/token × ceil | PG peak | longest tx ms | DB ms/turn (begin/save) |",
            "|" + "---|" * (len(columns) + 9),
        ]
        keys = [k for k in groups if k[1] == scenario]
        for variant, n, rows in by_level(groups, keys):
            base_name = "ceiling-asyncio" if variant.startswith(("daphne", "before")) else "ceiling"
            if variant.endswith("-pertoken"):
                base_name = "ceiling-pertoken"
            base = groups.get((base_name, scenario, n)) or groups.get(("ceiling", scenario, n), [])
            errors: dict[str, int] = {}
            for r in rows:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            errs = ", ".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"
            ok = sum(r["completed"] for r in rows)
            dbs = [r.get("db_ms_per_turn") or {} for r in rows]
            db_txt = (
                f"{fmt(median([d.get('begin', math.nan) for d in dbs]))}/"
                f"{fmt(median([d.get('save', math.nan) for d in dbs]))}"
                if any(dbs)
                else "–"
            )
            p99 = spread(rows, "completion_p99_s")[0]
            cells = [
                variant + (" **(shipped)**" if variant in HEADLINE else ""),
                str(n),
                f"{ok} / {errs}",
                ratio(p99, rows[0]["ideal_s"]),
                ratio(p99, spread(base, "completion_p99_s")[0]) if base else "–",
                *[fmt_spread(rows, c[1], c[2]) for c in columns],
                ratio(spread(rows, "cpu_per_token_us")[0], spread(base, "cpu_per_token_us")[0])
                if base
                else "–",
                str(max(r["pg_backends_peak"] for r in rows)),
                fmt(max(r.get("pg_tx_age_max_ms", math.nan) for r in rows), 0),
                db_txt,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if scenario == TURNS.name:
            lines += per_turn_lines(groups, keys)
        if scenario == STORM.name:
            lines += storm_lines(groups, keys)
        pairs = [("uvicorn", "daphne"), ("uvicorn", "uvicorn-shared-thread")]
        # The levers measured against the code before them, and scaling out against 1 worker.
        here = dict.fromkeys(k[0] for k in keys)
        pairs += [(v, v.partition("@")[0]) for v in here if "@" in v]
        pairs += [
            (v, "uvicorn") for v in ("uvicorn-redis", "uvicorn-2workers", "uvicorn-pgbouncer")
        ]
        pairs += [("uvicorn-2workers", "uvicorn-redis")]
        for a, b in pairs:
            for n in sorted({k[2] for k in keys}):
                ra, rb = groups.get((a, scenario, n)), groups.get((b, scenario, n))
                if ra and rb:
                    lines.append(
                        f"- N={n}: {a} vs {b}: p99 completion "
                        f"{compare(ra, rb, 'completion_p99_s')}, all CPU/token "
                        f"{compare(ra, rb, 'whole_cpu_per_token_us')}"
                    )
        lines.append("")
    lone = {k[0]: g for k, g in groups.items() if k[1] == "ramp" and k[2] == 1}
    if lone:
        lines += [
            "Lone stream (N=1, ramp scenario) completion, median: "
            + ", ".join(
                f"{v}: {fmt(spread(g, 'completion_p50_s')[0], 3)} s" for v, g in lone.items()
            ),
            "",
        ]
    lines += capacity_lines(results)
    lines += targets(results)
    lines += [f"- {note}" for note in notes]
    if elapsed:
        lines += ["", f"Whole run: {elapsed / 60:.1f} min.", ""]
    else:
        with contextlib.suppress(OSError):
            previous = (RESULTS / "results.md").read_text().splitlines()
            lines += ["", *[line for line in previous if line.startswith("Whole run:")], ""]
    (RESULTS / "results.md").write_text("\n".join(lines))
    plot(results)


def by_level(
    groups: dict[tuple[str, str, int], list[dict[str, Any]]], keys: list[tuple[str, str, int]]
) -> Iterator[tuple[str, int, list[dict[str, Any]]]]:
    """A scenario's groups in the report's order, by N then variant: (variant, N, rows)."""
    for variant, scenario, n in sorted(keys, key=lambda k: (k[2], k[0])):
        yield variant, n, groups[(variant, scenario, n)]


def per_turn_lines(
    groups: dict[tuple[str, str, int], list[dict[str, Any]]], keys: list[tuple[str, str, int]]
) -> list[str]:
    """The turns scenario's figure: CPU per turn (a turn streams `words` tokens)."""
    out = []
    for variant, n, rows in by_level(groups, keys):
        words = rows[0]["words"]
        # The CPU of every turn over the turns that completed: errors would inflate it.
        errors = sum(r["error_count"] for r in rows)
        out.append(
            f"- N={n}: {variant}: CPU per turn, all server-side "
            f"{fmt_spread(rows, 'whole_cpu_per_token_us', 0, words)} µs, the server process "
            f"{fmt_spread(rows, 'cpu_per_token_us', 0, words)} µs"
            + (f" (inflated: {errors} turns failed)" if errors else "")
        )
    return [*out, ""]


def storm_lines(
    groups: dict[tuple[str, str, int], list[dict[str, Any]]], keys: list[tuple[str, str, int]]
) -> list[str]:
    """The reconnect storm's own figures, and its p99 against the same ramp uncut."""
    out = []
    for variant, n, rows in by_level(groups, keys):
        uncut = groups.get((variant, RAMP.name, n))
        out.append(
            f"- N={n}: {variant}: {fmt_spread(rows, 'cut', 0)} sockets cut mid-reply, "
            f"{fmt_spread(rows, 'cut_ended_away', 0)} of them ended while away (answered "
            f"chat.idle, their saved text read back); all reopened "
            f"{fmt_spread(rows, 'cut_reopen_all_s', 2)} s after the cut; from the cut to the "
            f"reply's next frame p50 {fmt_spread(rows, 'cut_back_p50_ms', 0)} ms, p99 "
            f"{fmt_spread(rows, 'cut_back_p99_ms', 0)} ms"
            + (
                f"; p99 completion against the same ramp uncut: "
                f"{compare(rows, uncut, 'completion_p99_s')}"
                if uncut
                else ""
            )
        )
    return [*out, ""]


def capacity_lines(results: list[dict[str, Any]]) -> list[str]:
    """Capacity from the runs at hand: the largest ramp N where every repeat had 0 errors
    and the median p99 completion stayed within 1.25 times the variant's lone stream."""
    groups = grouped(results)
    out = []
    found: dict[str, tuple[int, int | None]] = {}  # passed, and the first level failed
    named = ("uvicorn", "daphne", "ceiling", "ceiling-asyncio")
    # Then the code before a lever (`uvicorn@<rev>`), where a run searched its capacity too
    # (a raw.json from before rows said so: any such variant with ramp rows).
    marked = any("capacity_probe" in r for r in results)
    earlier = sorted(
        {
            k[0]
            for k, rows in groups.items()
            if "@" in k[0]
            and k[1] == "ramp"
            and (not marked or any(r.get("capacity_probe") for r in rows))
        }
    )
    for variant in (*named, *earlier):
        lone = groups.get((variant, "ramp", 1))
        if not lone:
            continue
        limit = capacity_limit(lone)
        levels = sorted(k[2] for k in groups if k[0] == variant and k[1] == "ramp")
        best, failed_at = 0, 0
        for n in levels:
            if not within_capacity(groups[(variant, "ramp", n)], limit):
                failed_at = n
                break
            best = n
        found[variant] = (best, failed_at or None)
        bound = f"{best} ≤ capacity < {failed_at}" if failed_at else f"capacity ≥ {best}"
        out.append(
            f"- {variant}: {bound} streams (levels run: {', '.join(map(str, levels))}); "
            f"limit p99 ≤ {limit:.2f} s (1.25 × lone), 0 errors"
        )
    ceiling = found.get("ceiling")
    for variant in ("uvicorn", *earlier):
        app = found.get(variant)
        if not app or not app[0] or not ceiling or not ceiling[0]:
            continue
        # The app's capacity lies in [passed, failed), the ceiling's too: the ratio's bounds.
        low = f"{app[0] / ceiling[1]:.0%}" if ceiling[1] else None
        high = f"{app[1] / ceiling[0]:.0%}" if app[1] else None
        if low and high:
            between = f"between {low} and {high}"
        elif high:
            between = f"below {high}; the ceiling passed every level it ran, so no lower bound"
        elif low:
            between = f"at least {low}; the app passed every level it ran"
        else:
            between = "unbounded: both passed every level they ran"
        out.append(
            f"- capacity, {variant} ÷ ceiling: {between} "
            f"({app[0]} ÷ {ceiling[0]} = {app[0] / ceiling[0]:.0%} from the levels passed)"
        )
    return ["## Capacity", "", *out, ""] if out else []


def targets(results: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked against this run's medians."""
    groups = grouped(results)

    def find(variant: str, scenario: str, n: int) -> dict[str, Any] | None:
        rows = groups.get((variant, scenario, n))
        if not rows:
            return None
        keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
        out = dict(rows[0])
        out.update({k: spread(rows, k)[0] for k in keys})
        out["error_count"] = sum(r["error_count"] for r in rows)
        return out

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    out = ["## Targets (medians over the repeats)", ""]
    for server in HEADLINE:
        lone, big = find(server, "ramp", 1), find(server, "ramp", 300)
        if lone and big:
            limit = 1.25 * lone["completion_p50_s"]
            ok = big["error_count"] == 0 and big["completion_p99_s"] <= limit
            out.append(
                f"- {server}: 300 streams (ramp) complete with {big['error_count']} errors, "
                f"p99 {big['completion_p99_s']:.2f} s vs 1.25 × lone = {limit:.2f} s: {mark(ok)}"
            )
        burst = find(server, "burst", 250)
        if burst:
            ok = burst["error_count"] == 0 and burst["completion_p99_s"] <= 1.2 * burst["ideal_s"]
            out.append(
                f"- {server}: 250-client burst p99 {burst['completion_p99_s']:.2f} s vs 1.2 × "
                f"ideal = {1.2 * burst['ideal_s']:.2f} s: {mark(ok)}; TTFT+ under the burst "
                f"p50 {burst['ttft_added_p50_ms']:.0f} ms (target ≤ 250 ms): "
                f"{mark(burst['ttft_added_p50_ms'] <= 250)}"
            )
        hundred = find(server, "ramp", 100)
        if hundred:
            out.append(
                f"- {server}: TTFT+ p50 at 100 streams {hundred['ttft_added_p50_ms']:.1f} ms "
                f"(target ≤ 5 ms): {mark(hundred['ttft_added_p50_ms'] <= 5)}"
            )
        burst_base = find("ceiling-asyncio" if server == "daphne" else "ceiling", "burst", 250)
        if burst and burst_base and burst_base.get("whole_cpu_per_frame_us"):
            x = burst["whole_cpu_per_frame_us"] / burst_base["whole_cpu_per_frame_us"]
            out.append(
                f"- {server}: all server-side CPU per delivered frame at the 250 burst, × ceiling: "
                f"{x:.1f}× (target ≤ 2×): {mark(x <= 2)}"
            )
        # Streaming draws on no pool connection; the storm's page reloads (HTTP) do, beside
        # the turns' own few: a worker's bound there is both.
        runs = [r for r in results if r["variant"] == server]
        peaks = [r["pg_backends_peak"] for r in runs if r["scenario"] != STORM.name]
        if peaks:
            out.append(
                f"- {server}: peak PostgreSQL backends {max(peaks)} (pool max {POOL_MAX}): "
                f"{mark(max(peaks) <= POOL_MAX)}"
            )
        reloads = [r["pg_backends_peak"] for r in runs if r["scenario"] == STORM.name]
        if reloads:
            bound = POOL_MAX + LOOP_CONNECTIONS
            out.append(
                f"- {server}: peak PostgreSQL backends in the reconnect storm (its reloads "
                f"through the pool, beside the turns' {LOOP_CONNECTIONS}) {max(reloads)} "
                f"(at most {bound}): {mark(max(reloads) <= bound)}"
            )
    for variant in ("before", "before-nopool"):
        failed = [
            f"N={r['n']} ({r['scenario']}, repeat {r.get('repeat', 0) + 1}): "
            f"{r['completed']}/{r['n']} complete, "
            f"{r['error_count']} errors, p99 {r['completion_p99_s']:.1f} s, "
            f"{r['pg_backends_peak']} backends"
            for r in results
            if r["variant"] == variant and r["n"] > 1
        ]
        if failed:
            out.append(f"- {variant}: " + "; ".join(failed))
    return [*out, ""]


def plot(results: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed; no plot", flush=True)
        return
    ramp = [r for r in results if r["scenario"] == "ramp" and r["n"] > 1]
    if not ramp:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in ramp):
        by_n = grouped([r for r in ramp if r["variant"] == variant])
        rows = []
        for (_, _, n), g in sorted(by_n.items(), key=lambda kv: kv[0][2]):
            rows.append(
                {
                    "n": n,
                    "p99": spread(g, "completion_p99_s")[0] / g[0]["ideal_s"],
                    "cpu": spread(g, "whole_cpu_per_token_us")[0],
                    "error_count": sum(r["error_count"] for r in g),
                }
            )
        ns = [r["n"] for r in rows]
        p99 = [r["p99"] for r in rows]
        cpu = [r["cpu"] for r in rows]
        style = "--" if variant.startswith("before") else "-"
        (line,) = left.plot(ns, p99, style, marker="o", label=variant)
        right.plot(ns, cpu, style, marker="o", label=variant, color=line.get_color())
        # Runs with errors or timeouts: p99 and CPU/token cover the completed turns only.
        bad = [i for i, r in enumerate(rows) if r["error_count"]]
        for ax, ys in ((left, p99), (right, cpu)):
            ax.plot(
                [ns[i] for i in bad],
                [ys[i] for i in bad],
                "x",
                color="black",
                markersize=9,
                zorder=5,
            )
    left.axhline(1.25, color="grey", linewidth=0.8, linestyle=":")
    fig.text(
        0.01,
        0.01,
        "x: the run had errors or timeouts; its p99 and CPU/token cover completed turns only",
        fontsize=8,
    )
    left.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="p99 completion / ideal (median)",
        title="Completion time (200 words at 50/s, 5 s ramp)",
    )
    right.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="all server-side CPU µs per delivered word (median)",
        title="CPU per token",
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(RESULTS / "bench.png", dpi=110)
    plt.close(fig)


# --- profile summary -------------------------------------------------------------------------

PROFILE_BUCKETS = [
    ("generation task (Generation._stream, inclusive)", ("Generation._stream (",)),
    (
        "  coalescer bookkeeping: asyncio.wait/ensure_future per token",
        ("wait (asyncio/tasks", "ensure_future (asyncio", "_wait (asyncio/tasks"),
    ),
    ("  demo provider + asyncio.sleep pacing", ("DemoProvider.stream (", "sleep (asyncio/tasks")),
    ("  _emit/_deliver -> send (inclusive)", ("Generation._emit (", "Generation._deliver (")),
    ("  reply log (conversations/replies/replylog.py)", ("conversations/replies/replylog",)),
    ("JSON encode (json.dumps)", ("dumps (json/", "encode (json/encoder")),
    (
        "delta frame dicts + UUID str",
        ("delta_frame (", "DeltaFrames.frame (", "Generation._delta (", "UUID.__str__"),
    ),
    (
        "Channels send path (consumer.send -> session wrapper)",
        ("AsyncConsumer.send (", "InstanceSessionWrapper.send (", "ServerSocket.text_writer"),
    ),
    (
        "server write: Daphne/Twisted/Autobahn",
        (
            "handle_reply (daphne",
            "daphne/ws_protocol",
            "autobahn/",
            "twisted/internet/tcp",
            "twisted/internet/abstract",
        ),
    ),
    ("server write: uvicorn websockets-sansio", ("uvicorn/protocols/websockets",)),
    ("Channels in-memory layer (_clean_expired, group_send)", ("channels/layers",)),
    ("channels_redis", ("channels_redis",)),
    ("turn_start on the loop (reserve, prompt, registry)", ("turn_start (conversations",)),
    ("prometheus_client metrics", ("prometheus_client",)),
    ("sync_to_async hand-off on the loop (asgiref)", ("asgiref/sync",)),
    ("Django ORM + psycopg (worker threads)", ("django/db/", "psycopg")),
    (
        "session/user lookup in the handshake",
        ("get_user (channels/auth", "SessionStore", "_lookup_user"),
    ),
]

# Rows by self time (the leaf frame): the machinery under every task.
PROFILE_SELF = [
    ("asyncio/selectors machinery (self)", ("asyncio/", "selectors.py")),
    ("Twisted/Daphne/Autobahn (self)", ("twisted/", "daphne/", "autobahn/")),
    ("uvicorn/websockets (self)", ("uvicorn/", "websockets/")),
]


def _task_frames(frames: list[str]) -> list[str]:
    """The frames of the running task or callback: those after the event loop's Handle._run."""
    for i in range(len(frames) - 1, 0, -1):
        if frames[i].startswith("Handle._run (asyncio/events"):
            return frames[i + 1 :]
    return frames[1:]


def profile_samples(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw stacks: each one's frames, root (the thread) first, and its count."""
    samples = []
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        if stack and weight.isdigit():
            samples.append((stack.split(";"), int(weight)))
    return samples


def summarize_profile(path: Path) -> list[str]:
    """Shares of GIL-holding samples (py-spy --gil --threads): where the CPU goes.

    The first frame of each stack names the thread; the event loop runs on MainThread, every
    other thread is a sync_to_async worker. Buckets are inclusive and overlap.
    """
    samples = profile_samples(path)
    loop_threads = {frames[0] for frames, _ in samples if "MainThread" in frames[0]}
    total = sum(c for _, c in samples) or 1
    on_loop = sum(c for frames, c in samples if frames[0] in loop_threads)
    out = [
        f"### {path.name}: {total} GIL-holding samples",
        "",
        f"Event-loop thread: {on_loop / total:.1%} of them; worker threads "
        f"(database_sync_to_async): {(total - on_loop) / total:.1%}.",
        "",
        "| bucket (inclusive) | all threads | event loop only |",
        "|---|---|---|",
    ]
    for label, needles in PROFILE_BUCKETS:
        hits = [
            (frames[0] in loop_threads, c)
            for frames, c in samples
            if any(n in f for f in _task_frames(frames) for n in needles)
        ]
        hit = sum(c for _, c in hits)
        loop_hit = sum(c for on, c in hits if on)
        out.append(f"| {label} | {hit / total:.1%} | {loop_hit / max(on_loop, 1):.1%} |")
    for label, needles in PROFILE_SELF:
        hits = [
            (frames[0] in loop_threads, c)
            for frames, c in samples
            if any(n in frames[-1] for n in needles)
        ]
        hit = sum(c for _, c in hits)
        loop_hit = sum(c for on, c in hits if on)
        out.append(f"| {label} | {hit / total:.1%} | {loop_hit / max(on_loop, 1):.1%} |")
    own: dict[str, int] = {}
    for frames, count in samples:
        leaf = frames[-1] if frames else "?"
        own[leaf] = own.get(leaf, 0) + count
    out += ["", "Top self time:", "", "| function | share |", "|---|---|"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
        out.append(f"| `{name}` | {count / total:.1%} |")
    return [*out, ""]


def write_profile(results: list[dict[str, Any]]) -> None:
    sections = [
        "# Server profile under load",
        "",
        "py-spy 0.4 `record --rate 200 --nonblocking --gil --threads` on the server process,",
        "from the moment the turns start. Only samples holding the GIL count: this is where",
        "the server's Python CPU goes. The runs below were slowed by the profiler; their",
        "timings are not the benchmark's (see results.md).",
        "",
        f"Machine: {machine()}.",
        "",
    ]
    for r in results:
        sections.append(
            f"- {r['variant']} {r['scenario']} N={r['n']}: {r['completed']}/{r['n']} complete, "
            f"p99 {r['completion_p99_s']:.2f} s (ideal {r['ideal_s']:.1f} s), server CPU "
            f"{r['server_cpu_s']:.1f} s = {r['cpu_per_token_us']:.0f} µs/token, DB ms/turn "
            f"{ {k: round(v, 1) for k, v in (r.get('db_ms_per_turn') or {}).items()} }"
        )
    sections.append("")
    for path in sorted(RESULTS.glob("profile-*.txt")):
        sections += summarize_profile(path)
    sections += compare_profiles(results)
    (RESULTS / "profile.md").write_text("\n".join(sections))


# Parts of a stream's and a turn's work, first match wins, in both servers' code: the app's
# (conversations/) and the ceiling's (bench/ceiling.py), which mirrors it.
PROFILE_PARTS = [
    (
        "the server's send() itself (self time: mostly the kernel's write)",
        ("WebSocketsSansIOProtocol.send (", "Connection.send_data (websockets/"),
        True,
    ),
    ("turn: database statements (psycopg, on the loop)", ("loop_run (", "psycopg/"), False),
    (
        "frames: a tick's text into a frame, handed to the server (Python)",
        ("_stream.<locals>.flush (", "Ceiling.turn.<locals>.flush ("),
        False,
    ),
    (
        "model: the provider's words and their pacing",
        (
            "_stream.<locals>.pull (",
            "DemoProvider.stream (",
            "Ceiling.model (",
            # The pacing's own sleep, and its timer firing (py-spy often shows these alone).
            "sleep (asyncio/tasks",
            "_set_result_unless_cancelled (asyncio/futures",
        ),
        False,
    ),
    (
        "turn: receive, limits, prompt, accepted, save, done, title",
        (
            "turn_start (conversations",
            "ChatConsumer.receive (",
            "Generation._finish (",
            "conversations/titles",
            "Generation.run (",
        ),
        False,
    ),
    (
        "stream task: the first word, then waiting for each tick",
        ("conversations/replies/ticker", "Generation._stream (", "wait (asyncio/tasks"),
        False,
    ),
    ("turn: the ceiling's own frames and handler", ("Ceiling.turn (", "Ceiling.handler ("), False),
    ("event loop (uvloop, C)", ("Runner.run (asyncio/runners",), True),
]


def profile_parts(path: Path) -> dict[str, int]:
    """GIL-holding samples of one profile by part (`PROFILE_PARTS`; the rest is "other")."""
    parts: dict[str, int] = {}
    for frames, count in profile_samples(path):
        part = "other (asyncio, the server's receive path, metrics, ...)"
        for label, needles, leaf_only in PROFILE_PARTS:
            where = frames[-1:] if leaf_only else frames
            if any(n in f for f in where for n in needles):
                part = label
                break
        parts[part] = parts.get(part, 0) + count
    return parts


def compare_profiles(results: list[dict[str, Any]]) -> list[str]:
    """The app against the ceiling at the same ramp level, part by part, in µs a token: each
    part's share of the server's GIL-holding samples times its measured CPU per token."""
    ramps = [r for r in results if r["scenario"] == "ramp"]
    apps = {r["n"]: r for r in ramps if r["variant"] == "uvicorn"}
    ceilings = {r["n"]: r for r in ramps if r["variant"] == "ceiling"}
    both = apps.keys() & ceilings.keys()  # the profile's other ramp (300) is the app's alone
    if not both:
        return []
    n = max(both)
    app, ceiling = apps[n], ceilings[n]
    rows: dict[str, list[float]] = {}
    for k, r in enumerate((app, ceiling)):
        path = RESULTS / f"profile-{r['variant']}-ramp-{n}.txt"
        if not path.exists():
            return []
        parts = profile_parts(path)
        total = sum(parts.values()) or 1
        for label, count in parts.items():
            rows.setdefault(label, [0.0, 0.0])[k] = count / total * r["cpu_per_token_us"]
    out = [
        f"## Near capacity: the app against the ceiling, {n} ramped streams",
        "",
        "Each part's share of the server process's GIL-holding samples, times the run's "
        "measured CPU per token (the server process alone; PostgreSQL's CPU is apart, in "
        "results.md). Parts are exclusive, the first that matches a sample's stack "
        "(bench/run.py, `PROFILE_PARTS`). Both runs were slowed by the profiler.",
        "",
        "| part | uvicorn µs/token | ceiling µs/token | app − ceiling |",
        "|---|---|---|---|",
    ]
    for label, (a, c) in sorted(rows.items(), key=lambda kv: -(kv[1][0] - kv[1][1])):
        out.append(f"| {label} | {a:.1f} | {c:.1f} | {a - c:+.1f} |")
    a_all, c_all = app["cpu_per_token_us"], ceiling["cpu_per_token_us"]
    out += [f"| all | {a_all:.1f} | {c_all:.1f} | {a_all - c_all:+.1f} |", ""]
    return out


# --- entry -----------------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def smoke(bench: Bench) -> int:
    """Correctness only: every turn completes, no errors, the database is left as found."""
    failures: list[str] = []
    # The shipped configuration: daphne and uvicorn with the shipped defaults.
    variants = ["ceiling", "daphne", "before"]
    if shutil.which("uvicorn", path=str(BIN)):
        variants.append("uvicorn")
    n = bench.args.n or 20
    results = []
    for variant in variants:
        vn = min(n, POOL_MAX // 2) if variant == "before" else n
        r = bench.run_one(variant, SMOKE, vn)
        results.append(r)
        print(
            f"smoke {variant:8s} N={vn}: {r['completed']}/{vn} complete, errors {r['errors']}, "
            f"PG peak {r['pg_backends_peak']}, longest tx {r['pg_tx_age_max_ms']:.0f} ms, "
            f"after {r['pg_backends_after']}, after stop {r['pg_backends_after_stop']}, "
            f"settings changed {r['overrides'] or 'none'} ({r['run_s']:.1f}s)",
            flush=True,
        )
        if r["completed"] != vn or r["error_count"]:
            failures.append(f"{variant}: {r['completed']}/{vn} complete, errors {r['errors']}")
        if variant in HEADLINE:
            server_side = {"DB_CALL_THREADS", "MAX_GENERATIONS_PER_WORKER", "REDIS_URL"}
            if server_side & set(r["overrides"]):
                failures.append(f"{variant}: not the shipped configuration: {r['overrides']}")
            after = r["pg_backends_after"]
            busy = {k: v for k, v in after.items() if k != "idle"}
            if busy:
                failures.append(f"{variant}: backends still busy after the turns: {after}")
            if r["pg_long_tx_peak"]:
                failures.append(
                    f"{variant}: {r['pg_long_tx_peak']} transactions open for over a second"
                )
            if r["pg_backends_peak"] > POOL_MAX:
                failures.append(f"{variant}: {r['pg_backends_peak']} backends > pool {POOL_MAX}")
        if variant != "ceiling" and sum(r["pg_backends_after_stop"].values()):
            failures.append(
                f"{variant}: backends left after the server stopped: {r['pg_backends_after_stop']}"
            )
    if "uvicorn" in variants:
        # Every socket cut mid-reply and reopened: each reply still arrives whole, once.
        r = bench.run_one("uvicorn", SMOKE_STORM, n)
        results.append(r)
        print(
            f"smoke storm uvicorn N={n}: {r['completed']}/{n} complete, errors {r['errors']}, "
            f"{r['cut']} cut mid-reply, {r['cut_ended_away']} ended while away "
            f"({r['run_s']:.1f}s)",
            flush=True,
        )
        if r["completed"] != n or r["error_count"]:
            failures.append(f"storm: {r['completed']}/{n} complete, errors {r['errors']}")
        if r["cut"] != n:
            failures.append(f"storm: {r['cut']} of {n} sockets were cut mid-reply")
    (RESULTS / "smoke.json").write_text(json.dumps(results, indent=1))
    for failure in failures:
        print(f"SMOKE FAILURE: {failure}", flush=True)
    print("smoke: ok" if not failures else "smoke: FAILED", flush=True)
    return 1 if failures else 0


def capacity_limit(lone: list[dict[str, Any]]) -> float:
    """The capacity rule's bound on p99 completion: 1.25 times the lone stream's (median)."""
    return 1.25 * spread(lone, "completion_p50_s")[0]


def within_capacity(rows: list[dict[str, Any]], limit: float) -> bool:
    """The capacity rule at one level: 0 errors in every repeat, median p99 within `limit`."""
    return (
        bool(rows)
        and not any(r["error_count"] for r in rows)
        and spread(rows, "completion_p99_s")[0] <= limit
    )


def capacity_search(
    variants: list[str],
    grid: list[int],
    repeats: int,
    results: list[dict[str, Any]],
    probe: Any,
) -> None:
    """Capacity on the ramp: the largest N on `grid` with 0 errors in every repeat and median
    p99 completion ≤ 1.25 times the variant's lone stream. Doubling (grid index 0, 1, 3, 7,
    ...) until a probe fails, then bisection; each probe is `repeats` runs, interleaved
    between the variants still searching."""

    def rows(variant: str, n: int) -> list[dict[str, Any]]:
        return [r for r in results if (r["variant"], r["scenario"], r["n"]) == (variant, "ramp", n)]

    def round_of(todo: dict[str, int], label: str) -> None:
        todo = {v: n for v, n in todo.items() if len(rows(v, n)) < repeats}
        for k in range(repeats):
            for variant, n in todo.items():
                probe(label, variant, RAMP, n, k)

    round_of({v: 1 for v in variants}, "capacity: lone")
    limit = {v: capacity_limit(rows(v, 1)) for v in variants}

    def passes(variant: str, n: int) -> bool:
        return within_capacity(rows(variant, n), limit[variant])

    lo = {v: -1 for v in variants}  # the highest grid index known to pass
    hi = {v: len(grid) for v in variants}  # the lowest known to fail
    step = {v: 0 for v in variants}  # doubling: the next index to try, or -1 once bisecting
    while True:
        todo: dict[str, int] = {}
        for v in variants:
            if step[v] >= 0 and step[v] < hi[v]:
                todo[v] = step[v]
            elif hi[v] - lo[v] > 1:
                step[v] = -1
                todo[v] = (lo[v] + hi[v]) // 2
        if not todo:
            break
        round_of({v: grid[i] for v, i in todo.items()}, "capacity")
        for v, i in todo.items():
            if passes(v, grid[i]):
                lo[v] = i
                if step[v] >= 0:
                    step[v] = 2 * i + 1 if 2 * i + 1 < len(grid) else len(grid) - 1
                    if i == len(grid) - 1:
                        step[v], hi[v] = -1, i + 1
            else:
                hi[v] = i
                step[v] = -1


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="short correctness run")
    parser.add_argument("--n", type=int, default=0, help="clients in the smoke run (20)")
    parser.add_argument(
        "--pg",
        choices=["private", "shared"],
        default=None,
        help="private cluster (full default) or a database on --database-url (smoke default)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="for --pg shared (default postgres://postgres@127.0.0.1:5432/bench_chat, "
        "bench_smoke for --smoke)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--levels", default="1,100,300", help="ramp levels")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each figure, interleaved between variants"
    )
    parser.add_argument("--burst", default="250", help="burst levels")
    parser.add_argument(
        "--capacity",
        default="uvicorn,ceiling",
        help="variants whose capacity is searched on --capacity-grid ('' for none)",
    )
    parser.add_argument(
        "--capacity-grid",
        default="100,200,300,500,700,1000,1500,1750,2000,2500,3000,4000,5000,6000",
        help="the ramp levels the capacity search may probe",
    )
    parser.add_argument(
        "--variants",
        default="ceiling,ceiling-asyncio,daphne,uvicorn,uvicorn-shared-thread,before,"
        "uvicorn-redis,uvicorn-2workers,uvicorn-pgbouncer",
        help="variants for the ramp scenario; `uvicorn@<rev>` serves `git archive <rev>`",
    )
    parser.add_argument(
        "--burst-variants",
        default="ceiling,ceiling-asyncio,daphne,uvicorn,uvicorn-shared-thread,daphne-redis,before",
    )
    parser.add_argument(
        "--turns",
        default="1000",
        help="levels of the turns scenario (two-word replies, all at once: the cost of a turn)",
    )
    parser.add_argument("--turns-variants", default="ceiling,uvicorn")
    parser.add_argument(
        "--storm",
        default="1000",
        help="levels of the reconnect storm (the ramp, every streaming socket cut 5.5 s in, "
        "then reopened and resumed)",
    )
    parser.add_argument(
        "--storm-variants", default="uvicorn", help="app variants only: the ceiling cannot resume"
    )
    parser.add_argument(
        "--before-max", type=int, default=500, help="highest N the before designs run at"
    )
    parser.add_argument("--nopool-levels", default="100,250", help="before-nopool ramp levels")
    parser.add_argument(
        "--no-pertoken",
        dest="pertoken",
        action="store_false",
        help="skip the coalescing-off burst (ceiling and daphne, one frame per word)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the 250 burst, the 300 ramp, 1,000 short turns, and the app and the "
        "ceiling at --profile-ramp",
    )
    parser.add_argument(
        "--profile-ramp",
        type=int,
        default=1500,
        help="the ramp level --profile runs the app and the ceiling at, side by side: where the "
        "app's CPU goes beyond the ceiling's near its capacity (0: none)",
    )
    parser.add_argument("--uvicorn-ws", default="websockets-sansio")
    parser.add_argument(
        "--pgbouncer-pool",
        type=int,
        default=POOL_MAX,
        help="server connections PgBouncer keeps for uvicorn-pgbouncer (default: the pool's max)",
    )
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="serve the live tree instead of a copy taken at the start",
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a note for --report-only (repeatable)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite results.md and bench.png from raw.json"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for results.md, raw.json, bench.png and logs (default bench/results)",
    )
    args = parser.parse_args()
    RESULTS = args.results.resolve()
    if args.pg is None:
        args.pg = "shared" if args.smoke else "private"
    if args.database_url is None:
        name = "bench_smoke" if args.smoke else "bench_chat"
        args.database_url = f"postgres://postgres@127.0.0.1:5432/{name}"

    bench = Bench(args)
    began = time.monotonic()
    if args.report_only:
        write_report(json.loads((RESULTS / "raw.json").read_text()), args.note, 0.0)
        return 0
    if args.smoke:
        bench.start_database(args.n or 20)
        try:
            code = smoke(bench)
        finally:
            bench.stop_database()
        print(f"smoke: {time.monotonic() - began:.1f}s", flush=True)
        return code

    plan = Plan()
    levels = parse_levels(args.levels)
    variants = [v for v in args.variants.split(",") if v]
    for n in levels:
        for v in variants:
            if v.startswith("before") and n > args.before_max:
                continue
            plan.runs.append((v, RAMP, n))
    if args.pg == "private" or pg.PrivateCluster.available():
        for n in parse_levels(args.nopool_levels):
            if "before" in variants:
                plan.runs.append(("before-nopool", RAMP, n))
    burst_variants = [v for v in args.burst_variants.split(",") if v]
    plan.add(burst_variants, BURST, parse_levels(args.burst))
    plan.add([v for v in args.turns_variants.split(",") if v], TURNS, parse_levels(args.turns))
    plan.add([v for v in args.storm_variants.split(",") if v], STORM, parse_levels(args.storm))
    if args.pertoken:
        plan.add(["ceiling-pertoken", "daphne-pertoken"], PERTOKEN, parse_levels(args.burst))
    if args.profile:
        # A profile run of its own: py-spy perturbs timings, so it never feeds results.md.
        plan = Plan()
        plan.add(list(HEADLINE), BURST, [250])
        plan.add(["uvicorn"], RAMP, [300])
        plan.add(["uvicorn"], TURNS, [1000])
        if args.profile_ramp > 0:
            plan.add(["uvicorn", "ceiling"], RAMP, [args.profile_ramp])

    missing = {
        "uvicorn-2workers": "nginx" if not topology.nginx_available() else "",
        "uvicorn-pgbouncer": "pgbouncer" if not topology.pgbouncer_available() else "",
    }
    for variant in dict.fromkeys(v for v, _, _ in plan.runs):
        if binary := missing.get(variant.partition("@")[0]):
            print(f"bench: no {binary} here; {variant} is left out", flush=True)
    plan.runs = [r for r in plan.runs if not missing.get(r[0].partition("@")[0])]
    if args.snapshot:
        bench.take_snapshot()
    users = max([n for _, _, n in plan.runs] + parse_levels(args.capacity_grid))
    if args.pg == "private" and not pg.PrivateCluster.available():
        plan.runs = [r for r in plan.runs if r[0] != "before-nopool"]
    bench.start_database(users)
    if args.pg != "private":
        plan.runs = [r for r in plan.runs if r[0] != "before-nopool"]
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    # Repeats interleaved: every (scenario, N) runs its variants A, B, C, B, C, A, ...
    repeats = 1 if args.profile else max(1, args.repeats)
    groups: dict[tuple[str, int], list[str]] = {}
    scenarios = {}
    for variant, scenario, n in plan.runs:
        groups.setdefault((scenario.name, n), []).append(variant)
        scenarios[scenario.name] = scenario
    # Each round starts one variant later (A, B, C, then B, C, A, ...): a variant that always
    # ran first, right after another scenario, would carry whatever that left behind.
    runs = [
        (variant, scenarios[name], n, k)
        for (name, n), variants_here in groups.items()
        for k in range(repeats)
        for variant in variants_here[k % len(variants_here) :]
        + variants_here[: k % len(variants_here)]
    ]

    def probe(label: str, variant: str, scenario: Scenario, n: int, k: int) -> None:
        print(f"bench [{label}] {variant} {scenario.name} N={n} repeat {k + 1}", flush=True)
        try:
            r = bench.run_one(variant, scenario, n, k)
        except Exception as exc:
            notes.append(f"{variant} {scenario.name} N={n} did not finish: {exc}")
            print(f"  failed: {exc}", flush=True)
            return
        # Every row says whether the capacity search ran it: the capacity section reports
        # only the variants a run searched (a raw.json without the field predates it).
        r["capacity_probe"] = label.startswith("capacity")
        results.append(r)
        report(r, n)

    def report(r: dict[str, Any], n: int) -> None:
        print(
            f"  {r['completed']}/{n} ok, errors {r['errors']}, p99 {r['completion_p99_s']:.2f}s"
            f" (ideal {r['ideal_s']:.1f}s), TTFT+ p50/p99 {r['ttft_added_p50_ms']:.1f}/"
            f"{r['ttft_added_p99_ms']:.1f} ms, CPU {r['server_cpu_s']:.2f}s "
            f"({r['cpu_per_token_us']:.0f} µs/token; all server-side "
            f"{r['whole_cpu_per_token_us']:.0f} µs/token), "
            f"client CPU {r['client_cpu_s']:.1f}s, "
            f"PG peak {r['pg_backends_peak']} (idle in tx {r['pg_idle_in_tx_peak']}), "
            f"{r['run_s']:.0f}s",
            flush=True,
        )
        if not args.profile:
            write_report(results, notes, time.monotonic() - began)

    try:
        for i, (variant, scenario, n, k) in enumerate(runs, 1):
            probe(f"{i}/{len(runs)}", variant, scenario, n, k)
        if args.capacity and not args.profile:
            capacity_search(
                [v for v in args.capacity.split(",") if v],
                parse_levels(args.capacity_grid),
                repeats,
                results,
                probe,
            )
    finally:
        bench.stop_database()
        bench.drop_snapshot()
        bench.drop_revisions()
    if args.profile:
        write_profile(results)
    else:
        write_report(results, notes, time.monotonic() - began)
    print(f"bench: done in {(time.monotonic() - began) / 60:.1f} min -> {RESULTS}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
