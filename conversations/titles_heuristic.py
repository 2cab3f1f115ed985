"""Pure: a conversation title from its first message."""

from __future__ import annotations


def title_from_message(content: str, limit: int = 60) -> str:
    """A heuristic title: the first line of the first message, cut at a word."""
    line = " ".join(content.strip().split("\n", 1)[0].split())
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(" ,.;:") + "…"
