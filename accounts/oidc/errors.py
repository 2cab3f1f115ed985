from __future__ import annotations

from typing import Literal

Reason = Literal["state", "nonce", "code", "token", "unavailable", "denied", "refused"]


class SignInError(Exception):
    """A sign-in that cannot finish; `reason` picks the page the user sees."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason: Reason = reason
