"""Every frame in and out: client commands parsed and validated, server frames built.

Pure code, no database. Refusals are built by the error classes' own `.frame()`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from conversations.context import ReplyInfo, TurnContext
from conversations.errors import Invalid, TooLarge
from conversations.llm.base import Usage
from conversations.text import UNSTORABLE_MESSAGE, unstorable, visible

Frame = dict[str, Any]
# Hands a frame to a follower without waiting (a socket's outbox); False: it stopped following.
Deliver = Callable[[Frame], bool]
# An after_seq past any delta: only the final frame is wanted (a stop from a socket that was
# not following, the HTTP API and the chat command waiting for the end).
FINAL_ONLY = 2**62


@dataclass(frozen=True)
class Send:
    conversation_id: uuid.UUID | None
    persona: str | None
    content: str
    client_id: uuid.UUID
    # With `parent_given`, the reply this message follows (None: a new first message);
    # without, the message continues the active path.
    parent_id: uuid.UUID | None = None
    parent_given: bool = False
    attachments: tuple[uuid.UUID, ...] = ()  # the sender's upload ids, in order


@dataclass(frozen=True)
class Regenerate:
    """A new reply to the user message that `message_id` (a reply) answers."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    client_id: uuid.UUID


@dataclass(frozen=True)
class Stop:
    conversation_id: uuid.UUID


@dataclass(frozen=True)
class Resume:
    conversation_id: uuid.UUID
    after_seq: int


Command = Send | Regenerate | Stop | Resume
# The commands that start a reply.
Turn = Send | Regenerate


def _uuid(frame: dict[str, Any], key: str, *, nullable: bool = False) -> uuid.UUID | None:
    if key not in frame:
        raise Invalid(f"Missing field {key!r}.")
    value = frame[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise Invalid(f"Field {key!r} must be a UUID string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Invalid(f"Field {key!r} is not a valid UUID.") from None


def _known_ids(frame: dict[str, Any]) -> dict[str, str]:
    """Ids echoed back in chat.error so the client can tell which request failed."""
    known = {}
    for key in ("client_id", "conversation_id"):
        value = frame.get(key)
        if isinstance(value, str) and len(value) <= 64:
            known[key] = value
    return known


# Room in a frame for everything but the message: type, ids, persona slug, JSON syntax.
FRAME_OVERHEAD = 4096
# The most a character can take in a JSON string: an astral one escaped as a surrogate pair,
# "\\ud83d\\ude00" (json.dumps does that unless ensure_ascii=False).
ESCAPED_CHAR_WIDTH = 12


def frame_limit() -> int:
    """The longest text frame read at all, in characters.

    The frame is measured before it is parsed, so a flood costs nothing to refuse; the
    limit a user meets is MAX_MESSAGE_CHARS of content. So the cap always leaves room for
    a message at that limit written in the widest escapes, whatever MAX_FRAME_BYTES says:
    else 12,000 "é" from a client that escapes non-ASCII would be refused as too large.
    """
    needed = settings.MAX_MESSAGE_CHARS * ESCAPED_CHAR_WIDTH + FRAME_OVERHEAD
    return max(settings.MAX_FRAME_BYTES, needed)


def parse_frame(text: str | None) -> Command:
    """Turn a text frame into a command, or raise a ChatError naming what is wrong."""
    if text is None:
        raise Invalid("Frames must be JSON text, not binary.")
    limit = frame_limit()
    if len(text) > limit:
        raise TooLarge(f"Frames are limited to {limit} characters.")
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise Invalid("Frames must be JSON objects.") from None
    if not isinstance(frame, dict):
        raise Invalid("Frames must be JSON objects.")
    if unstorable(frame):
        raise Invalid(UNSTORABLE_MESSAGE, **_known_ids(frame))
    return command_from(frame)


def command_from(frame: dict[str, Any]) -> Command:
    """A parsed frame as a command; the HTTP API builds its frame as a dict and starts here,
    so its limits count the content's characters exactly as the socket's do."""
    try:
        return _command(frame)
    except (Invalid, TooLarge) as error:
        error.fields = {**_known_ids(frame), **error.fields}
        raise


def _command(frame: dict[str, Any]) -> Command:
    kind = frame.get("type")
    if kind == "chat.send":
        return _send(frame)
    if kind == "chat.regenerate":
        return _regenerate(frame)
    if kind == "chat.stop":
        conversation_id = _uuid(frame, "conversation_id")
        assert conversation_id is not None
        return Stop(conversation_id=conversation_id)
    if kind == "chat.resume":
        conversation_id = _uuid(frame, "conversation_id")
        assert conversation_id is not None
        after_seq = frame.get("after_seq", 0)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise Invalid("Field 'after_seq' must be a non-negative integer.")
        return Resume(conversation_id=conversation_id, after_seq=after_seq)
    if not isinstance(kind, str):
        raise Invalid("Every frame needs a string 'type'.")
    raise Invalid(f"Unknown frame type {kind[:40]!r}.")


def _send(frame: dict[str, Any]) -> Send:
    client_id = _uuid(frame, "client_id")
    assert client_id is not None
    conversation_id = _uuid(frame, "conversation_id", nullable=True)
    persona = frame.get("persona")
    if persona is not None and (not isinstance(persona, str) or not persona):
        raise Invalid("Field 'persona' must be a persona slug or null.")
    if "content" not in frame:
        raise Invalid("Missing field 'content'.")
    content = frame["content"]
    if not isinstance(content, str):
        raise Invalid("Field 'content' must be a string.")
    content = content.strip()
    attachments = _attachments(frame)
    if not visible(content) and not attachments:
        raise Invalid("The message is empty.")
    if len(content) > settings.MAX_MESSAGE_CHARS:
        raise TooLarge(f"Messages are limited to {settings.MAX_MESSAGE_CHARS} characters.")
    parent_given = "parent_id" in frame
    parent_id = _uuid(frame, "parent_id", nullable=True) if parent_given else None
    return Send(
        conversation_id=conversation_id,
        persona=persona,
        content=content,
        client_id=client_id,
        parent_id=parent_id,
        parent_given=parent_given,
        attachments=attachments,
    )


def _attachments(frame: dict[str, Any]) -> tuple[uuid.UUID, ...]:
    value = frame.get("attachments")
    if value is None:
        return ()
    limit = settings.MAX_ATTACHMENTS_PER_MESSAGE
    if not isinstance(value, list):
        raise Invalid("Field 'attachments' must be a list of upload ids.")
    if len(value) > limit:
        raise Invalid(f"A message takes at most {limit} attachments.")
    ids = []
    for item in value:
        try:
            ids.append(uuid.UUID(item) if isinstance(item, str) else None)
        except ValueError:
            ids.append(None)
    if None in ids:
        raise Invalid("Field 'attachments' must hold upload ids (UUID strings).")
    if len(set(ids)) != len(ids):
        raise Invalid("The same file is attached twice.")
    return tuple(i for i in ids if i is not None)


def _regenerate(frame: dict[str, Any]) -> Regenerate:
    conversation_id = _uuid(frame, "conversation_id")
    message_id = _uuid(frame, "message_id")
    client_id = _uuid(frame, "client_id")
    assert conversation_id is not None and message_id is not None and client_id is not None
    return Regenerate(conversation_id=conversation_id, message_id=message_id, client_id=client_id)


class FrameRate:
    """Frames a socket may send: `per_second` on average, three seconds' worth at once.

    A page sends a frame when its user acts, and a few on reconnect; a client past this is
    flooding. Daphne reads a socket as fast as it is written to and queues each frame for
    the application, so the flood must end at the socket, not frame by frame.
    """

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.capacity = per_second * 3
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# --- server to client ----------------------------------------------------------------


def delta_frame(conversation_id: uuid.UUID, message_id: uuid.UUID, seq: int, text: str) -> Frame:
    return {
        "type": "chat.delta",
        "conversation_id": str(conversation_id),
        "message_id": str(message_id),
        "seq": seq,
        "text": text,
    }


# `json.dumps(..., ensure_ascii=False)`, less making an encoder for every frame.
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def encode(frame: Frame) -> str:
    """A frame as the socket sends it: UTF-8 as is (escaped, an emoji costs 12 bytes, not 4)."""
    encoded = getattr(frame, "encoded", None)
    return encoded if encoded is not None else _to_json(frame)


class EncodedFrame(dict[str, Any]):
    """A frame that carries its own JSON, made once however many sockets follow it."""

    __slots__ = ("encoded",)

    encoded: str


class DeltaFrames:
    """The `chat.delta` frames of one reply. The part every frame shares is encoded once,
    so a frame costs one small `json.dumps` (of its text) rather than one of the whole
    frame, and no UUID formatting. The bytes are those `encode(delta_frame(...))` gives."""

    def __init__(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        self.conversation_id = str(conversation_id)
        self.message_id = str(message_id)
        shared = {
            "type": "chat.delta",
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
        }
        self._prefix = _to_json(shared)[:-1] + ', "seq": '

    def frame(self, seq: int, text: str) -> EncodedFrame:
        frame = EncodedFrame(
            type="chat.delta",
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            seq=seq,
            text=text,
        )
        frame.encoded = f'{self._prefix}{seq}, "text": {_to_json(text)}}}'
        return frame


def done_frame(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    *,
    status: str,
    content: str,
    usage: Usage,
    error: str | None,
) -> Frame:
    return {
        "type": "chat.done",
        "conversation_id": str(conversation_id),
        "message_id": str(message_id),
        "status": status,
        "content": content,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        "error": error or None,
    }


def saved_done_frame(conversation_id: uuid.UUID, reply: ReplyInfo) -> Frame:
    return done_frame(
        conversation_id,
        reply.message_id,
        status=reply.status,
        content=reply.content,
        usage=Usage(reply.input_tokens, reply.output_tokens),
        error=reply.error,
    )


def accepted_frame(ctx: TurnContext) -> Frame:
    return {
        "type": "chat.accepted",
        "conversation_id": str(ctx.conversation_id),
        "client_id": str(ctx.client_id),
        "user_message_id": str(ctx.user_message_id),
        "message_id": str(ctx.message_id),
        "persona": ctx.persona.slug,
        "title": ctx.title,
        # Additive (branches): where the user message sits in the tree, and whether this
        # reply is a new version of an earlier message's reply.
        "parent_id": str(ctx.user_parent_id) if ctx.user_parent_id else None,
        "regenerate": ctx.regenerated,
    }


def idle_frame(conversation_id: uuid.UUID | str) -> Frame:
    return {"type": "chat.idle", "conversation_id": str(conversation_id)}
