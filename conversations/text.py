"""Users' text: what a database column can hold (checked where JSON from clients is
decoded), and what shows as one line, to them and to others (a title, a display name).
Attachment file names have their own, stricter rule (attachments/judge.py)."""

from __future__ import annotations

import unicodedata
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

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): in a
# line they turn the text after them around, so "invoice\u202efdp.exe" reads as a PDF. The
# marks (U+200E, U+200F) only nudge neutral characters and stay; so do joiners, which emoji
# and some scripts need.
_BIDI_CONTROLS = dict.fromkeys(range(0x202A, 0x202F)) | dict.fromkeys(range(0x2066, 0x206A))

# The control characters, Unicode's category Cc: U+0000-U+001F and U+007F-U+009F, a set
# Unicode's stability policy fixes for good. A table for `str.translate`, which drops them
# in one pass in C. Every new conversation's title goes through `one_line` at least twice,
# and asking `unicodedata` each character's category there was about 3% of the worker's
# samples in a py-spy profile of 1,000 short turns (`python -m bench.run --profile`).
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


def one_line(text: str) -> str:
    """`text` without control characters or bidirectional overrides, every run of
    whitespace (line breaks too) one space, trimmed."""
    words = text.translate(_BIDI_CONTROLS).split()
    return " ".join(kept for word in words if (kept := word.translate(_CONTROLS)))


def visible(text: str) -> bool:
    """Whether anything in `text` shows: a text of spaces, zero-width spaces and joiners
    alone is a blank one."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text)
