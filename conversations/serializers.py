"""Plain dicts for the JSON API: the shapes PROTOCOL.md promises, nothing more."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from django.core.serializers.json import DjangoJSONEncoder

from conversations.models import Conversation, Message
from personas.models import Persona

# Oldest first; the id settles messages saved in the same microsecond, so that pages of a
# conversation read by key (the streamed export) never skip or repeat one.
MESSAGE_ORDER = ("created_at", "id")
# Rows a read holds at once: this many of the longest replies, not the whole conversation.
MESSAGE_CHUNK = 50


def persona_dict(persona: Persona) -> dict[str, Any]:
    return {
        "slug": persona.slug,
        "name": persona.name,
        "description": persona.description,
        "avatar": persona.avatar,
        "is_default": persona.is_default,
    }


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "persona": conversation.persona.slug,
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_dict(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": message.created_at.isoformat(),
        # Additive to PROTOCOL.md's shape: lets a reloaded page say why a reply failed.
        "error": message.error or None,
    }


def conversation_detail_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        **conversation_dict(conversation),
        "messages": [message_dict(m) for m in conversation.messages.all()],
    }


def conversation_detail_json(conversation: Conversation) -> bytes:
    """`JsonResponse(conversation_detail_dict(...))`'s body, written one message at a time.

    The dict route holds every row, every dict, the JSON text and its bytes at once (about
    three times a big conversation); this holds the body and one chunk of rows.
    """
    head = json.dumps(conversation_dict(conversation), cls=DjangoJSONEncoder)
    body = io.BytesIO()
    body.write(head[:-1].encode() + b', "messages": [')
    messages = conversation.messages.order_by(*MESSAGE_ORDER)
    for index, message in enumerate(messages.iterator(chunk_size=MESSAGE_CHUNK)):
        if index:
            body.write(b", ")
        body.write(json.dumps(message_dict(message), cls=DjangoJSONEncoder).encode())
    body.write(b"]}")
    return body.getvalue()  # shares the buffer: no copy


def conversation_export_dict(conversation: Conversation) -> dict[str, Any]:
    # The export carries what a person needs to read it elsewhere: the persona's name too.
    return {
        **conversation_detail_dict(conversation),
        "persona_name": conversation.persona.name,
        "created_at": conversation.created_at.isoformat(),
    }


def conversation_markdown(conversation: Conversation) -> str:
    return "".join(export_pieces(MarkdownExport(conversation), conversation.messages.all()))


# --- exports, written piece by piece ------------------------------------------------------


class Export(Protocol):
    """An export format as pieces: what comes before the messages, each one, and the end."""

    def head(self) -> str: ...
    def message(self, message: Message) -> str: ...
    def tail(self) -> str: ...


def export_pieces(export: Export, messages: Iterable[Message]) -> Iterator[str]:
    yield export.head()
    for message in messages:
        yield export.message(message)
    yield export.tail()


class JsonExport:
    """`json.dumps(conversation_export_dict(c), indent=2, ensure_ascii=False)`, byte for byte.

    Strings never hold a raw newline in JSON, so each message's own dump is indented into
    place by indenting its lines.
    """

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.count = 0

    @staticmethod
    def _dumps(value: dict[str, Any]) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False)

    def head(self) -> str:
        before = self._dumps(conversation_dict(self.conversation))
        return before.removesuffix("\n}") + ',\n  "messages": ['

    def message(self, message: Message) -> str:
        self.count += 1
        separator = "\n    " if self.count == 1 else ",\n    "
        return separator + self._dumps(message_dict(message)).replace("\n", "\n    ")

    def tail(self) -> str:
        after = {
            "persona_name": self.conversation.persona.name,
            "created_at": self.conversation.created_at.isoformat(),
        }
        close = "\n  ]" if self.count else "]"
        return close + ",\n" + self._dumps(after).removeprefix("{\n")


class MarkdownExport:
    """The conversation as Markdown: a heading per message, the persona's name for replies."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.persona_name = conversation.persona.name
        self.held = ""

    def head(self) -> str:
        lines = [f"# {self.conversation.title or 'Untitled conversation'}", ""]
        exported = self.conversation.updated_at.isoformat()
        lines += [f"Persona: {self.persona_name}", f"Exported: {exported}", ""]
        return self._hold("\n".join(lines))

    def message(self, message: Message) -> str:
        heading = "You" if message.role == Message.Role.USER else self.persona_name
        if message.status != Message.Status.COMPLETE:
            heading += f" ({message.get_status_display().lower()})"
        return self._hold("\n" + "\n".join([f"## {heading}", "", message.content, ""]))

    def tail(self) -> str:
        return "\n"

    def _hold(self, text: str) -> str:
        """`text` up to its last visible character, after any whitespace held back before.

        The document ends in exactly one newline whatever the last message ends with, and
        only the end can tell which whitespace is trailing, so it waits until then.
        """
        visible = text.rstrip()
        if not visible:
            self.held += text
            return ""
        written = self.held + visible
        self.held = text[len(visible) :]
        return written
