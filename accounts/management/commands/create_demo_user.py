from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accounts.services import demo_user_ensure


class Command(BaseCommand):
    help = "Create a demo account for local use (refused when DJANGO_DEBUG is false)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-chat-2026")
        parser.add_argument("--display-name", default="Demo User")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Where the app runs.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo account is for local development (DJANGO_DEBUG=true).")
        try:
            found = demo_user_ensure(
                username=options["username"],
                password=options["password"],
                display_name=options["display_name"],
            )
        except ValidationError as exc:
            refusals = [
                f"--{name}: {' '.join(errors)}" for name, errors in exc.message_dict.items()
            ]
            raise CommandError(f"create_demo_user: {'; '.join(refusals)}") from None
        except DatabaseError as exc:
            raise CommandError(f"create_demo_user: cannot read the database: {exc}") from None
        login = f"log in at {options['url']}/accounts/login/ as {options['username']}"
        if found == "other password":
            self.stdout.write(
                f"create_demo_user: already exists; its password was left as it was; {login} "
                "with that password"
            )
            return
        state = "created" if found == "created" else "already exists"
        self.stdout.write(f"create_demo_user: {state}; {login} / {options['password']}")
