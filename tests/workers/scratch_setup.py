"""Run in a subprocess against a scratch database: migrate, seed, and log users in.

Prints one JSON line: {"cookies": {username: sessionid}}.
"""

from __future__ import annotations

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from tests.conftest import make_user  # noqa: E402


def main(usernames: list[str]) -> None:
    call_command("migrate", verbosity=0)
    call_command("seed_personas", verbosity=0)
    cookies = {}
    for name in usernames:
        user = make_user(name, name.title())
        client = Client()
        client.force_login(user)
        cookies[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
    print(json.dumps({"cookies": cookies}))


if __name__ == "__main__":
    main(sys.argv[1:])
