"""Peak memory of one request for a big conversation's detail and export (issue 10).

    .venv/bin/python -m bench.api_memory --database-url postgres://postgres@127.0.0.1:5432/api_mem

Makes (once) a conversation of `--messages` messages of `--kib` KiB each, then for each
endpoint runs one fresh process that serves a warm-up request and then the big one through
the ASGI application (the body is counted and dropped, as a fast client would read it), and
prints the rise of the peak RSS (VmHWM, reset after the warm-up) and tracemalloc's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PATHS = {
    "detail": "/api/conversations/{id}/",
    "export md": "/api/conversations/{id}/export/?format=md",
    "export json": "/api/conversations/{id}/export/?format=json",
}
WORDS = "Plan the trip to Lisbon: café, pastéis de nata, the tram up to the castelo. ".split()


def _setup(database_url: str) -> None:
    os.environ.update(DATABASE_URL=database_url, DJANGO_DEBUG="true", REDIS_URL="")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    import django

    django.setup()


def prepare(messages: int, kib: int) -> dict[str, str]:
    """The user's session cookie and the ids of a small and the big conversation."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from conversations.models import Conversation, Message
    from conversations.services import message_append
    from personas.models import Persona

    user, _ = get_user_model().objects.get_or_create(username="memory-bench")
    persona, _ = Persona.objects.get_or_create(slug="assistant", defaults={"name": "Assistant"})
    chats = {}
    for title, count in (("small", 2), ("big", messages)):
        chat, created = Conversation.objects.get_or_create(
            owner=user, title=f"{title} {messages}x{kib}", defaults={"persona": persona}
        )
        if created:
            text = " ".join(WORDS * (kib * 1024 // len(" ".join(WORDS)) + 1))[: kib * 1024]
            for i in range(count):
                message_append(
                    conversation=chat,
                    role=Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT,
                    content=f"{i} {text}",
                )
        chats[title] = str(chat.id)
    client = Client()
    client.force_login(user)
    return {"cookie": client.cookies[settings.SESSION_COOKIE_NAME].value, **chats}


async def _get(app: Any, path: str, cookie: str) -> int:
    from django.conf import settings

    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    received = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal received, status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            received += len(message.get("body", b""))

    await app(scope, receive, send)
    assert status == 200, status
    return received


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def measure(path: str, small: str, cookie: str, mode: str) -> dict[str, float]:
    from django.core.asgi import get_asgi_application

    app = get_asgi_application()
    asyncio.run(_get(app, path.format(id=small), cookie))  # imports, pool, first query
    if mode == "tracemalloc":
        tracemalloc.start()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _hwm_kib()
    size = asyncio.run(_get(app, path.format(id=sys.argv[-1]), cookie))
    if mode == "tracemalloc":
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    else:
        peak = (_hwm_kib() - before) / 1024
    return {"bytes": size, "peak_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--kib", type=int, default=160)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _setup(args.database_url)
        path, small, cookie, mode, _big = args.child
        print(json.dumps(measure(path, small, cookie, mode)))
        return
    env = {**os.environ, "DATABASE_URL": args.database_url, "DJANGO_DEBUG": "true"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    _setup(args.database_url)
    ids = prepare(args.messages, args.kib)
    print(f"conversation: {args.messages} messages x {args.kib} KiB")
    for name, path in PATHS.items():
        row = [f"{name:>12}"]
        for mode in ("rss", "tracemalloc"):
            child = [path, ids["small"], ids["cookie"], mode, ids["big"]]
            out = subprocess.run(
                [sys.executable, "-m", "bench.api_memory", "--database-url", args.database_url,
                 "--child", *child],
                cwd=ROOT, env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row.append(f"{mode} peak +{result['peak_mib']:.1f} MiB")
        row.append(f"body {result['bytes'] / 2**20:.1f} MiB")
        print("  ".join(row))


if __name__ == "__main__":
    main()
