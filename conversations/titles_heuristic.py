"""Pure: a conversation title from its first message."""

from __future__ import annotations

import re

from conversations.text import one_line, visible

_MARKDOWN_LEAD = re.compile(r"^(?:#{1,6}|>|[-*+]|\d+[.)])\s+")


def title_from_message(content: str, limit: int = 60) -> str:
    """A heuristic title: the first line of prose in the first message, cut at a word."""
    lines = (line.strip() for line in content.strip().splitlines())
    first = next((line for line in lines if visible(line) and not line.startswith("```")), "")
    line = one_line(_MARKDOWN_LEAD.sub("", first))
    if not visible(line):
        return "New chat"
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(" ,.;:") + "…"
