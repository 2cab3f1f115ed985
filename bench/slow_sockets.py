"""Memory per never-reading socket, under Uvicorn and Daphne, for the code that ships.

N sockets of one user connect with a 2 KiB receive buffer and never read; the user's normal
tab then sends M long messages (each stopped at once), whose copies go to every other tab
of the user, so each never-reading socket is offered about M x 60 KB. The server's RSS is
read before and after, the kernel's send queues with `ss`, and what the app itself holds for
its sockets (outboxes and the server's transport buffers) from its /metrics. The control has
the same N sockets reading. RSS is the allocator's high-water mark (freed memory is kept), so
"held by the app" is the figure that shows the bound. `--app-dir` serves another
tree (e.g. a worktree of an older commit) with the same harness, for a before/after.

    createdb slow_bench
    .venv/bin/python -m bench.slow_sockets --database-url postgres://postgres@127.0.0.1/slow_bench
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import free_port, proc_memory_kib, wait_port

ROOT = Path(__file__).resolve().parent.parent


def prepare(database_url: str) -> str:
    """Migrate, seed a persona and a user; the user's session cookie."""
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "true"}
    code = (
        "from django.core.management import call_command; call_command('migrate', verbosity=0);"
        "call_command('seed_personas', verbosity=0);"
        "from django.contrib.auth.models import User; from django.test import Client;"
        "u = User.objects.filter(username='slowbench').first() or "
        "User.objects.create_user('slowbench', password='x-long-password-1');"
        "c = Client(); c.force_login(u); print(c.cookies['sessionid'].value)"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def never_reads(port: int, cookie: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={cookie}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return sock


def reading(port: int, cookie: str) -> socket.socket:
    """The control: the same socket, drained by a thread as a browser would."""
    import threading

    sock = never_reads(port, cookie)

    def drain() -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    threading.Thread(target=drain, daemon=True).start()
    return sock


def scrape(port: int) -> dict[str, float]:
    """The server's own account of what it holds for its sockets (/metrics)."""
    import urllib.request

    wanted = {
        "chat_socket_queued_bytes": 0.0,
        "chat_socket_server_buffered_bytes": 0.0,
        "chat_slow_sockets_dropped_total": 0.0,
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                wanted[name] = float(value)
    return wanted


def send_queues(port: int) -> int:
    out = subprocess.run(
        ["ss", "-tnH", f"sport = :{port}"], capture_output=True, text=True
    ).stdout.splitlines()
    return sum(int(line.split()[2]) for line in out if line.split())


async def fill(port: int, cookie: str, turns: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{port}/ws/chat/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": f"http://127.0.0.1:{port}"},
        max_size=None,
    ) as tab:
        for index in range(turns):
            client_id = str(uuid.uuid4())
            frame = {
                "type": "chat.send",
                "conversation_id": None,
                "persona": None,
                "content": f"filler {index} " + "😀" * 15000,
                "client_id": client_id,
            }
            await tab.send(json.dumps(frame, ensure_ascii=False))
            conversation = None
            while True:
                got = json.loads(await asyncio.wait_for(tab.recv(), 30))
                if got["type"] == "chat.accepted" and got.get("client_id") == client_id:
                    conversation = got["conversation_id"]
                    await tab.send(
                        json.dumps({"type": "chat.stop", "conversation_id": conversation})
                    )
                if got["type"] in {"chat.done", "chat.error"} and (
                    got.get("conversation_id") == conversation or got.get("client_id") == client_id
                ):
                    break


def one_run(args: argparse.Namespace, server: str, cookie: str, read: bool) -> dict[str, float]:
    port = free_port()
    app_dir = Path(args.app_dir or ROOT)
    binary = str(Path(sys.executable).with_name(server))
    if server == "uvicorn":
        options = ["--port", str(port), "--ws", "websockets-sansio", "--lifespan", "off"]
        options.append("--no-proxy-headers")
        command = [binary, "chatproject.asgi:application", *options]
    else:
        command = [binary, "-p", str(port), "chatproject.asgi:application"]
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "DJANGO_DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        "DEMO_TOKEN_DELAY_MS": "5",
        "DEMO_REPLY_WORDS": "20",
        "METRICS_PUBLIC": "true",
        # The tab sends and stops as fast as it can: a script, not a flood to cut off.
        "SOCKET_FRAMES_PER_SECOND": "1000",
        "MESSAGES_PER_MINUTE": "100000",
        "MAX_GENERATIONS_PER_USER": "1000",
    }
    env.pop("REDIS_URL", None)
    log = open(args.server_log, "a") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    sockets: list[socket.socket] = []
    try:
        wait_port(port)
        asyncio.run(fill(port, cookie, 1))  # warm up: imports, pool, first turn
        before = proc_memory_kib(process.pid)["VmRSS"]
        opener = reading if read else never_reads
        sockets = [opener(port, cookie) for _ in range(args.sockets)]
        asyncio.run(fill(port, cookie, args.turns))
        time.sleep(1)
        after = proc_memory_kib(process.pid)["VmRSS"]
        queued = send_queues(port)
        held = scrape(port)  # before the sockets close and the server stops
    finally:
        for sock in sockets:
            sock.close()
        process.kill()
        process.wait()
    return {
        "rss_per_socket_kib": (after - before) / args.sockets,
        "kernel_per_socket_kib": queued / 1024 / args.sockets,
        "held_per_socket_kib": (
            held["chat_socket_queued_bytes"] + held["chat_socket_server_buffered_bytes"]
        )
        / 1024
        / args.sockets,
        "dropped": held["chat_slow_sockets_dropped_total"],
        "queued_kib": held["chat_socket_queued_bytes"] / 1024 / args.sockets,
    }


def spread(values: list[float]) -> str:
    """Median (min-max) over the repeats."""
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--app-dir", help="serve this tree instead (a before/after)")
    parser.add_argument("--servers", default="uvicorn,daphne")
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--turns", type=int, default=25, help="long messages sent")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-log", help="append the servers' output to this file")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    cookie = prepare(args.database_url)
    offered = args.turns * 60
    print(f"{args.sockets} never-reading sockets, ~{offered} KB offered to each\n")
    print(
        "| server | sockets | held by the app per socket, KiB (outbox + server buffer) "
        "| kernel send queue per socket, KiB | sockets dropped (4008) "
        "| RSS growth per socket, KiB |"
    )
    print("|---|---|---|---|---|---|")
    for server in args.servers.split(","):
        for read in (True, False):
            runs = [one_run(args, server, cookie, read) for _ in range(args.repeats)]
            cells = [
                spread([r[key] for r in runs])
                for key in ("held_per_socket_kib", "kernel_per_socket_kib", "dropped")
            ]
            rss = spread([r["rss_per_socket_kib"] for r in runs])
            kind = "reading (control)" if read else "never reading"
            print(f"| {server} | {kind} | {' | '.join(cells)} | {rss} |", flush=True)
            if args.verbose:
                print("  outbox KiB per socket:", [round(r["queued_kib"]) for r in runs])


if __name__ == "__main__":
    main()
