"""Text a database column can hold, checked where JSON from clients is decoded."""

from __future__ import annotations

from typing import Any


def unstorable(value: Any) -> bool:
    """Whether a decoded JSON value holds a string no column can keep: NUL, which PostgreSQL
    refuses outright, or a lone surrogate ("\\ud800" is valid JSON but not UTF-8). Left to
    the database, either is a server error after the turn has begun, not a refusal."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


UNSTORABLE_MESSAGE = "Text may not contain NUL characters or unpaired surrogates."
