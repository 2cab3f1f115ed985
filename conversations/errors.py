"""Domain errors, each with the protocol code it answers to."""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    code = "invalid"
    # What went wrong in an operator's words (a setting's name, say): for logs and the chat
    # command, never sent to users.
    detail: str | None = None

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> ChatError:
        """The error a `chat.error` frame stands for (e.g. one read back from the reply log)."""
        kinds = {kind.code: kind for kind in ChatError.__subclasses__()}
        return kinds.get(frame["code"], ChatError)(frame["message"])

    def frame(self, **known: Any) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "chat.error", "code": self.code, "message": self.message}
        frame.update({k: v for k, v in known.items() if v is not None})
        frame.update(self.fields)
        return frame


class Invalid(ChatError):
    code = "invalid"


class TooLarge(ChatError):
    code = "too_large"


class NotFound(ChatError):
    code = "not_found"


class Busy(ChatError):
    code = "busy"


class RateLimited(ChatError):
    code = "rate_limited"


class Unavailable(ChatError):
    code = "unavailable"


class ProviderFailed(ChatError):
    code = "provider_error"


class SaveFailed(ChatError):
    code = "save_failed"


class SessionEnded(ChatError):
    """The socket's session was logged out, or its user deactivated, deleted or re-keyed."""

    code = "unauthorized"


class Forbidden(ChatError):
    """The conversation is the user's, but its persona is no longer theirs to use."""

    code = "forbidden"


class QuotaExceeded(ChatError):
    """The user's token budget for this period is used up (`retry_after`: to the next)."""

    code = "quota_exceeded"
