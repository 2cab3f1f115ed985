"""Prepare a benchmark database: create it, migrate, seed personas, make N users with sessions.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_chat \
        python -m bench.prepare --users 2000 --out bench/results/.users.json

Users get an unusable password (no slow hashing) and a session row written directly, so
2,000 of them take a second or two. The output file lists one session key per user.
Also `--reset` empties conversations and messages between runs (users stay).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def django_setup(pool: bool = False) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    if not pool:
        os.environ["DB_POOL"] = "false"  # a one-shot command: plain connections
    import django

    django.setup()


def make_users(count: int, prefix: str) -> list[str]:
    from datetime import timedelta

    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from accounts.models import Profile

    User: Any = get_user_model()
    names = [f"{prefix}{i:05d}" for i in range(count)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create(
        [User(username=n, password=make_password(None)) for n in names if n not in existing],
        batch_size=1000,
    )
    users = list(User.objects.filter(username__in=names).order_by("username"))
    have_profile = set(Profile.objects.filter(user__in=users).values_list("user_id", flat=True))
    Profile.objects.bulk_create(
        [
            Profile(user=u, display_name=f"Bench {u.username[-5:]}")
            for u in users
            if u.id not in have_profile
        ],
        batch_size=1000,
    )
    store = SessionStore()
    backend = settings.AUTHENTICATION_BACKENDS[0]
    expire = timezone.now() + timedelta(days=1)
    sessions, keys = [], []
    for user in users:
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: backend,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expire)
        )
        keys.append(key)
    Session.objects.filter(expire_date__lt=timezone.now()).delete()
    Session.objects.bulk_create(sessions, batch_size=1000)
    return keys


def reset_conversations() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE conversations_message, conversations_conversation CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reset", action="store_true", help="only empty the conversations")
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    began = time.monotonic()
    if args.reset:
        django_setup()
        reset_conversations()
        return
    ensure_database(url)
    django_setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    call_command("seed_personas", verbosity=0)
    reset_conversations()
    keys = make_users(args.users, args.prefix)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"sessions": keys}))
    print(f"prepare: {len(keys)} users ready in {time.monotonic() - began:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
