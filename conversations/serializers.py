"""Plain dicts for the JSON API: the shapes PROTOCOL.md promises, nothing more."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Prefetch, QuerySet

from attachments.models import Attachment
from attachments.serve import attachment_dict, owner_url
from conversations.models import Conversation, Message
from conversations.tree import (
    Node,
    Tree,
    default_leaf,
    path_through,
    path_to,
    siblings,
    tree_of,
)
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
        # Additive: the page warns before sending images to a persona that cannot read them.
        "accepts_images": persona.accepts_images,
    }


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "persona": conversation.persona.slug,
        "updated_at": conversation.updated_at.isoformat(),
    }


def _usage(message: Message) -> dict[str, int | None] | None:
    if message.input_tokens is None and message.output_tokens is None:
        return None
    return {"input_tokens": message.input_tokens, "output_tokens": message.output_tokens}


def with_attachments(messages: QuerySet[Message]) -> QuerySet[Message]:
    """The messages with their attachments read in one more query, for message_dict."""
    rows = Attachment.objects.select_related("upload").order_by("position")
    return messages.prefetch_related(Prefetch("attachments", queryset=rows, to_attr="attached"))


def _attachments(message: Message) -> list[dict[str, Any]]:
    if message.role != Message.Role.USER:
        return []
    # Read with with_attachments(); a lone message (the HTTP API's answer) reads its own.
    rows = getattr(message, "attached", None)
    if rows is None:
        rows = list(message.attachments.select_related("upload").order_by("position"))
    return [attachment_dict(row.upload, owner_url(row.upload_id)) for row in rows]


def message_dict(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": message.created_at.isoformat(),
        # Additive to PROTOCOL.md's shape: lets a reloaded page say why a reply failed.
        "error": message.error or None,
        "parent_id": str(message.parent_id) if message.parent_id else None,
        "feedback": message.rating,
        "usage": _usage(message),
        "attachments": _attachments(message),
    }


def path_message_dict(message: Message, tree: Tree) -> dict[str, Any]:
    """A message as a path shows it: with its versions, so the page can switch between them."""
    return {
        **message_dict(message),
        "siblings": [str(i) for i in siblings(tree, message.id)],
        # Additive: the owner's own comment on their rating, so a reloaded page can show it.
        "feedback_comment": message.rating_comment or None,
    }


# --- reading a conversation's tree ------------------------------------------------------


def conversation_tree(conversation_id: uuid.UUID) -> Tree:
    """Every message's id, parent and time in one query: a few dozen bytes a message, where
    the full rows of a long conversation are megabytes."""
    rows = Message.objects.filter(conversation_id=conversation_id).values_list(
        "id", "parent_id", "created_at"
    )
    return tree_of(Node(*row) for row in rows.iterator(chunk_size=2000))


def messages_in_order(ids: list[uuid.UUID]) -> list[Message]:
    """The full rows of `ids` (at most a chunk of them), in the order given."""
    found = {m.id: m for m in with_attachments(Message.objects.filter(id__in=ids))}
    return [found[i] for i in ids if i in found]


def path_messages(ids: list[uuid.UUID]) -> Iterator[Message]:
    """The messages of a path, MESSAGE_CHUNK rows read at a time: one query a chunk."""
    for start in range(0, len(ids), MESSAGE_CHUNK):
        yield from messages_in_order(ids[start : start + MESSAGE_CHUNK])


@dataclass(frozen=True)
class Shown:
    """The path a detail shows and the active path's end, worked out from the tree."""

    path: list[uuid.UUID]
    current_leaf_id: uuid.UUID | None


def shown_path(conversation: Conversation, tree: Tree, leaf: uuid.UUID | None = None) -> Shown:
    """The active path (root to current_leaf), or with `leaf` the path through that message
    continued down its newest branch; `leaf` must be in the tree."""
    current = conversation.current_leaf_id
    if current is None or current not in tree:
        current = default_leaf(tree)
    active = path_to(tree, current) if current is not None else []
    return Shown(active if leaf is None else path_through(tree, leaf), current)


def _detail_head(conversation: Conversation, shown: Shown) -> dict[str, Any]:
    leaf = shown.current_leaf_id
    return {**conversation_dict(conversation), "current_leaf_id": str(leaf) if leaf else None}


def conversation_detail_dict(
    conversation: Conversation, leaf: uuid.UUID | None = None
) -> dict[str, Any]:
    """The detail as one dict: the plain form of what `conversation_detail_json` writes."""
    tree = conversation_tree(conversation.id)
    shown = shown_path(conversation, tree, leaf)
    return {
        **_detail_head(conversation, shown),
        "messages": [path_message_dict(m, tree) for m in path_messages(shown.path)],
    }


def conversation_detail_json(
    conversation: Conversation, tree: Tree, leaf: uuid.UUID | None = None
) -> bytes:
    """`JsonResponse(conversation_detail_dict(...))`'s body, written one message at a time.

    The dict route holds every row, every dict, the JSON text and its bytes at once (about
    three times a big conversation); this holds the tree's skeleton, the body and one chunk
    of rows.
    """
    shown = shown_path(conversation, tree, leaf)
    head = json.dumps(_detail_head(conversation, shown), cls=DjangoJSONEncoder)
    body = io.BytesIO()
    body.write(head[:-1].encode() + b', "messages": [')
    for index, message in enumerate(path_messages(shown.path)):
        if index:
            body.write(b", ")
        body.write(json.dumps(path_message_dict(message, tree), cls=DjangoJSONEncoder).encode())
    body.write(b"]}")
    return body.getvalue()  # shares the buffer: no copy


def _in_order(messages: Iterable[Message]) -> list[Message]:
    return sorted(messages, key=lambda m: (m.created_at, m.id))


def conversation_export_dict(conversation: Conversation) -> dict[str, Any]:
    """The whole tree, every branch, each message with its parent_id; uses prefetched
    messages when there are (the export command)."""
    # The export carries what a person needs to read it elsewhere: the persona's name too.
    leaf = conversation.current_leaf_id
    return {
        **conversation_dict(conversation),
        "current_leaf_id": str(leaf) if leaf else None,
        "messages": [message_dict(m) for m in _in_order(conversation.messages.all())],
        "persona_name": conversation.persona.name,
        "created_at": conversation.created_at.isoformat(),
    }


def active_path_of(conversation: Conversation, messages: Iterable[Message]) -> list[Message]:
    """The active path among `messages` (the whole conversation, read already)."""
    by_id = {m.id: m for m in messages}
    tree = tree_of(Node(m.id, m.parent_id, m.created_at) for m in by_id.values())
    return [by_id[i] for i in shown_path(conversation, tree).path]


def conversation_markdown(conversation: Conversation) -> str:
    """The active path as Markdown; uses prefetched messages when there are."""
    path = active_path_of(conversation, conversation.messages.all())
    return "".join(export_pieces(MarkdownExport(conversation), path))


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
    """`json.dumps(conversation_export_dict(c), indent=2, ensure_ascii=False)`, byte for byte:
    every message of the tree, each with its parent_id.

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
        leaf = self.conversation.current_leaf_id
        before = self._dumps(
            {**conversation_dict(self.conversation), "current_leaf_id": str(leaf) if leaf else None}
        )
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
