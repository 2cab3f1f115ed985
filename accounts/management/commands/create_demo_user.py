from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

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
        created = demo_user_ensure(
            username=options["username"],
            password=options["password"],
            display_name=options["display_name"],
        )
        state = "created" if created else "already exists"
        self.stdout.write(
            f"create_demo_user: {state}; log in at {options['url']}/accounts/login/ "
            f"as {options['username']} / {options['password']}"
        )
