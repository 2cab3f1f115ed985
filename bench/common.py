"""Small helpers shared by the benchmark's harness, load client and ceiling server.

Nothing here imports Django: the ceiling server and the load client stay free of it.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterator, Sequence

# The words the ceiling server streams: the demo provider's filler, so frames weigh the same.
FILLER = (
    "Here is how I would think it through. First, name the goal in one sentence so "
    "it stays in view. Then list what you already know, what you still need, and the "
    "smallest next step that would teach you something. Keep notes as you go, because "
    "the second attempt is always easier when the first one is written down. When you "
    "are unsure, try the simple version first and measure it before adding anything clever."
).split()

# Handshakes the load client runs at once while it opens every socket, before the turns.
CONNECT_CONCURRENCY = 64

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tokens(count: int) -> list[str]:
    """`count` word tokens, each with the space that follows it (the last one without)."""
    words = [w + " " for w in itertools.islice(itertools.cycle(FILLER), count)]
    if words:
        words[-1] = words[-1].rstrip()
    return words


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime, stime are fields 14 and 15.
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.1)


def free_port() -> int:
    """A free local port: from `BENCH_PORTS` ("8650-8699") when set, else any the OS gives."""
    import socket

    lo, _, hi = os.environ.get("BENCH_PORTS", "").partition("-")
    candidates = range(int(lo), int(hi or lo) + 1) if lo else [0]
    for port in candidates:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port in BENCH_PORTS={os.environ['BENCH_PORTS']}")


def children(ppid: int) -> list[int]:
    """The pids whose parent is `ppid` (PostgreSQL's backends are the postmaster's)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out.append(int(entry))
    return out


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each pid still alive (a pid gone meanwhile is left out)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = proc_cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue
    return out


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
