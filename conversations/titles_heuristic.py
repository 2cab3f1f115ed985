"""Pure: a conversation title from its first message."""

from __future__ import annotations

import re

_MARKDOWN_LEAD = re.compile(r"^(?:#{1,6}|>|[-*+]|\d+[.)])\s+")


def title_from_message(content: str, limit: int = 60) -> str:
    """A heuristic title: the first line of prose in the first message, cut at a word."""
    lines = (line.strip() for line in content.strip().splitlines())
    first = next((line for line in lines if line and not line.startswith("```")), "")
    line = " ".join(_MARKDOWN_LEAD.sub("", first).split())
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(" ,.;:") + "…"
