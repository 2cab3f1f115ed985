"""POST /api/conversations/<id>/messages/ and /api/messages/<id>/regenerate/: the
non-streaming turns.

They run the very same turn as the socket (`turn_start`: the same refusals, the same
process-owned generation saved by `reply_save`) and answer once the reply is committed.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse

from conversations.api import api_view, error_response, json_body, request_user
from conversations.db import db_call
from conversations.errors import ChatError, NotFound
from conversations.models import Message
from conversations.replies.protocol import Regenerate, Send, Turn, command_from
from conversations.replies.registry import registry
from conversations.replies.start import Started, turn_start
from conversations.serializers import message_dict

HTTP_STATUS = {
    "invalid": 400,
    "too_large": 413,
    "not_found": 404,
    "busy": 409,
    "rate_limited": 429,
    "unavailable": 503,
    "provider_error": 502,
    "save_failed": 500,
    "unauthorized": 401,
    "forbidden": 403,
    "quota_exceeded": 429,
}


def chat_error_response(error: ChatError) -> JsonResponse:
    response = error_response(HTTP_STATUS.get(error.code, 400), error.code, error.message)
    if "retry_after" in error.fields:
        # HTTP counts whole seconds (RFC 9110); the frame's field keeps its fraction.
        response["Retry-After"] = str(max(1, math.ceil(error.fields["retry_after"])))
    return response


def _messages(user_message_id: uuid.UUID, reply_id: uuid.UUID) -> dict[str, Any]:
    user_message = Message.objects.get(id=user_message_id)
    reply = Message.objects.filter(id=reply_id, parent=user_message).first()
    return {
        "user_message": message_dict(user_message),
        "assistant_message": message_dict(reply) if reply else None,
    }


def _command(request: HttpRequest, conversation_id: uuid.UUID) -> Send:
    data = json_body(request)
    frame = {
        "type": "chat.send",
        "conversation_id": str(conversation_id),
        "client_id": data.get("client_id") or str(uuid.uuid4()),
    }
    # The body's fields are chat.send's, checked by the same parser (the URL names the rest).
    for field in ("content", "parent_id", "attachments"):
        if field in data:
            frame[field] = data[field]
    # Validated as the dict it is: re-encoding it as a frame would measure the escapes
    # (12,000 "é" are 72,000 characters of JSON), not the message.
    command = command_from(frame)
    assert isinstance(command, Send)
    return command


def _retrieved(task: asyncio.Task[Started]) -> None:
    # A refusal nobody waits for any more (the client hung up) is no error of the process.
    if not task.cancelled():
        task.exception()


async def _start(user_id: int, command: Turn) -> Started:
    """turn_start in a task of the process, shielded from the request.

    A client that hangs up cancels the request; cancelled between committing the user
    message and starting the generation, turn_start would leave a message with no reply.
    """
    task = registry.spawn(turn_start(user_id=user_id, command=command))
    task.add_done_callback(_retrieved)
    return await asyncio.shield(task)


def _raise_if_error(final: dict[str, Any]) -> None:
    if final.get("type") == "chat.error":
        raise ChatError.from_frame(final)


async def _answer(user_id: int, command: Turn) -> JsonResponse:
    try:
        started = await _start(user_id, command)
        # Here, on another worker or saved before: the same wait. A client that hangs up
        # cancels only the wait, never the process-owned reply.
        _raise_if_error(await started.reply.final())
    except ChatError as error:
        return chat_error_response(error)
    messages = await db_call(_messages)(started.ctx.user_message_id, started.ctx.message_id)
    return JsonResponse(messages, status=201)


@api_view("POST")
async def post_message(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    user_id = request_user(request).pk  # read by api_view, in db_call
    try:
        command = _command(request, conversation_id)
    except ChatError as error:
        return chat_error_response(error)
    return await _answer(user_id, command)


def _conversation_of(user_id: int, message_id: uuid.UUID) -> uuid.UUID:
    """The conversation of one of the user's messages: the frame names it, the URL does not."""
    found = (
        Message.objects.filter(id=message_id, conversation__owner_id=user_id)
        .values_list("conversation_id", flat=True)
        .first()
    )
    if found is None:
        raise NotFound("No such message.")
    return found


def _regenerate_command(
    request: HttpRequest, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> Regenerate:
    data = json_body(request)
    frame = {
        "type": "chat.regenerate",
        "conversation_id": str(conversation_id),
        "message_id": str(message_id),
        "client_id": data.get("client_id") or str(uuid.uuid4()),
    }
    command = command_from(frame)
    assert isinstance(command, Regenerate)
    return command


@api_view("POST")
async def regenerate(request: HttpRequest, message_id: uuid.UUID) -> JsonResponse:
    """A new version of a reply, as `chat.regenerate` makes it, answered once it is saved."""
    user_id = request_user(request).pk
    try:
        conversation_id = await db_call(_conversation_of)(user_id, message_id)
        command = _regenerate_command(request, conversation_id, message_id)
    except ChatError as error:
        return chat_error_response(error)
    return await _answer(user_id, command)
