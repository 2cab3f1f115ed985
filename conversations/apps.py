from __future__ import annotations

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"

    def ready(self) -> None:
        from conversations import (
            checks,  # noqa: F401  (registers the LLM provider checks)
            signals,  # noqa: F401  (sessions that end end their sockets)
        )
