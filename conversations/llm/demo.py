"""The offline demo provider: deterministic, paced, and visibly personal."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncGenerator

from django.conf import settings

from conversations.llm.base import ChatMessage, Provider, ProviderError, ProviderRequest, Usage
from conversations.titles_heuristic import title_from_message

_FILLER = (
    "Here is how I would think it through. First, name the goal in one sentence so "
    "it stays in view. Then list what you already know, what you still need, and the "
    "smallest next step that would teach you something. Keep notes as you go, because "
    "the second attempt is always easier when the first one is written down. When you "
    "are unsure, try the simple version first and measure it before adding anything clever."
).split()

_TIPS = (
    ("Start small", "and widen the scope once the first piece works."),
    ("Write it down", "so that tomorrow's you can pick up where you stopped."),
    ("Ask why twice", "because the second answer is usually the real reason."),
    ("Measure first", "then change one thing at a time."),
    ("Sleep on it", "if the answer still feels forced."),
)


def _words(text: str) -> list[str]:
    return text.split()


def _brief(text: str, limit: int) -> str:
    words = _words(text)
    short = " ".join(words[:limit])
    return short + ("…" if len(words) > limit else "")


def demo_reply_tokens(request: ProviderRequest, reply_words: int | None = None) -> list[str]:
    """The reply as tokens, each one word with the whitespace that follows it."""
    last = next((m for m in reversed(request.messages) if m.role == "user"), None)
    question = last.content if last is not None else "your message"
    if last is not None and last.file_names:
        # The files' text came first in the content; the question is what follows.
        question = question.rsplit("</file>", 1)[-1].strip() or "about your files"
    name = request.user_name or "there"
    persona = request.persona_name or "your assistant"
    style = request.persona_description or "plain and helpful"
    digest = int(hashlib.sha256(question.encode()).hexdigest(), 16)
    tips = [_TIPS[(digest + i) % len(_TIPS)] for i in range(2)]
    blocks = [
        f"Hello {name}! This is {persona}, answering in my usual style ({_brief(style, 12)}).",
        f'You asked: "{_brief(question, 16)}"',
        *([_seen(last)] if last is not None and (last.images or last.file_names) else []),
        " ".join(_FILLER[: 20 + digest % 20]),
        "\n".join(f"- **{head}** {tail}" for head, tail in tips),
        f"That is my take, {name}. Ask me to go deeper on any part.",
    ]
    tokens: list[str] = []
    for i, block in enumerate(blocks):
        lines = block.split("\n")
        for j, line in enumerate(lines):
            words = _words(line)
            for k, word in enumerate(words):
                last_in_line = k == len(words) - 1
                if not last_in_line:
                    tokens.append(word + " ")
                elif j < len(lines) - 1:
                    tokens.append(word + "\n")
                elif i < len(blocks) - 1:
                    tokens.append(word + "\n\n")
                else:
                    tokens.append(word)
    if reply_words:
        filler = itertools.cycle(w + " " for w in _FILLER)
        if len(tokens) < reply_words:
            tokens[-1] += "\n\n"
        while len(tokens) < reply_words:
            tokens.append(next(filler))
        tokens = tokens[:reply_words]
        tokens[-1] = tokens[-1].rstrip()
    return tokens


def _seen(message: ChatMessage) -> str:
    """What the demo "sees" of the attachments, so a user (and a test) can tell they
    arrived: each image's name and pixel size, each file's name."""
    seen = []
    if message.images:
        count = len(message.images)
        shown = ", ".join(f"{i.name}, {i.width}×{i.height}" for i in message.images)
        seen.append(f"{count} image{'s' if count > 1 else ''} ({shown})")
    if message.file_names:
        count = len(message.file_names)
        seen.append(f"{count} file{'s' if count > 1 else ''} ({', '.join(message.file_names)})")
    return "I see " + " and ".join(seen) + "."


class DemoProvider(Provider):
    name = "demo"

    def __init__(
        self,
        *,
        delay_ms: int | None = None,
        reply_words: int | None = None,
        fail_after_words: int | None = None,
    ) -> None:
        self.delay = (settings.DEMO_TOKEN_DELAY_MS if delay_ms is None else delay_ms) / 1000
        self.reply_words = settings.DEMO_REPLY_WORDS if reply_words is None else reply_words
        self.fail_after_words = (
            settings.DEMO_FAIL_AFTER_WORDS if fail_after_words is None else fail_after_words
        )
        self.fail_rate = settings.DEMO_FAIL_RATE

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[str | Usage, None]:
        if request.purpose == "title":
            question = request.messages[-1].content if request.messages else ""
            yield title_from_message(question)
            return
        tokens = demo_reply_tokens(request, self.reply_words)
        fail_after = self.fail_after_words
        if fail_after is None and self.fail_rate:
            # Chaos runs: a deterministic share of questions fail part-way through.
            digest = int(hashlib.sha256(request.messages[-1].content.encode()).hexdigest(), 16)
            if digest % 100 < self.fail_rate:
                fail_after = 1 + digest % max(1, len(tokens) - 1)
        # Word i is due at start + (i + 1) * delay: a late wake-up shortens the next sleep
        # instead of pushing every later word back, so lateness does not pile up.
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, token in enumerate(tokens):
            if fail_after is not None and index >= fail_after:
                raise ProviderError("The demo model failed mid-reply (failure injection).")
            if self.delay:
                await asyncio.sleep(max(0.0, start + (index + 1) * self.delay - loop.time()))
            yield token
        prompt_words = len(_words(request.system)) + sum(
            len(_words(m.content)) for m in request.messages
        )
        yield Usage(input_tokens=prompt_words, output_tokens=len(tokens))
