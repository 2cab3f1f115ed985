"""Wire servers for whole turns: a new conversation makes two calls, its reply and its title.

`WireServer` answers every request with one `Script`. A turn through the chat core also asks
the model for a title when it creates a conversation, at the same time as the reply. This
server tells the two calls apart by the title instruction in the system message and answers
each with a script of its own, so a test can stall, fail or stop one without touching the other.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conversations.titles import TITLE_INSTRUCTION
from tests.llm.wire_servers import (
    Dialect,
    GeminiDialect,
    OpenAIDialect,
    RecordedRequest,
    Script,
    WireServer,
    _StreamingHandler,
)

TITLE = "Buried Treasure on Skull Island"


def openai_text_events(text: str, usage: tuple[int, int] = (40, 6)) -> list[dict[str, Any]]:
    """A complete chat/completions stream that answers `text` in one piece."""
    base = {
        "id": "chatcmpl-title",
        "object": "chat.completion.chunk",
        "created": 1746612345,
        "model": "gpt-4o-mini-2024-07-18",
    }
    return [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        },
    ]


def gemini_text_events(text: str, usage: tuple[int, int] = (40, 6)) -> list[dict[str, Any]]:
    """A complete streamGenerateContent stream that answers `text` in one piece."""
    return [
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": usage[0],
                "candidatesTokenCount": usage[1],
                "totalTokenCount": sum(usage),
            },
            "modelVersion": "gemini-2.5-flash",
        }
    ]


def text_events(dialect: Dialect, text: str) -> list[dict[str, Any]]:
    if isinstance(dialect, GeminiDialect):
        return gemini_text_events(text)
    return openai_text_events(text)


def system_text(body: Any) -> str:
    """The system instruction of a recorded request, in either wire format."""
    if not isinstance(body, dict):
        return ""
    if "messages" in body:
        first = body["messages"][0] if body["messages"] else {}
        return str(first.get("content", "")) if first.get("role") == "system" else ""
    parts = (body.get("systemInstruction") or {}).get("parts") or []
    return "".join(str(part.get("text", "")) for part in parts)


def conversation_of(body: Any) -> list[tuple[str, str]]:
    """(role, text) of every message after the system instruction; Gemini's `model` is
    reported as `assistant`."""
    if "messages" in body:
        return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]
    return [
        ("assistant" if c["role"] == "model" else c["role"], "".join(p["text"] for p in c["parts"]))
        for c in body["contents"]
    ]


def purpose_of(body: Any) -> str:
    return "title" if system_text(body) == TITLE_INSTRUCTION else "reply"


class TurnServer(WireServer):
    """`script` answers replies; `title_script` answers title calls (a quick title by default)."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.title_script = Script(events=text_events(dialect, TITLE))
        self.counts: Counter[str] = Counter()
        self._httpd.RequestHandlerClass = _handler_for_turns(self)

    @classmethod
    def openai(cls) -> TurnServer:
        return cls(OpenAIDialect())

    @classmethod
    def gemini(cls) -> TurnServer:
        return cls(GeminiDialect())

    def record_purpose(self, purpose: str, request: RecordedRequest) -> int:
        """Keep the request; answer its ordinal among the calls of the same purpose."""
        with self._lock:
            self.requests.append(request)
            self.counts[purpose] += 1
            return self.counts[purpose]

    def requests_for(self, purpose: str) -> list[RecordedRequest]:
        return [r for r in self.requests if purpose_of(r.body) == purpose]


def _handler_for_turns(server: TurnServer) -> type[_StreamingHandler]:
    class Handler(_TurnHandler):
        wire = server

    return Handler


class _TurnHandler(_StreamingHandler):
    wire: TurnServer

    def do_POST(self) -> None:
        # As WireServer's handler, except that the script depends on what is asked.
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        purpose = purpose_of(body)
        dialect = self.wire.dialect
        script = self.wire.title_script if purpose == "title" else self.wire.script
        recorded = RecordedRequest("POST", url.path, query, headers, body)
        ordinal = self.wire.record_purpose(purpose, recorded)

        if not dialect.route(url.path, query):
            self._json(404, dialect.error_body(404))
        elif dialect.api_key(headers, query) != script.api_key:
            status = script.auth_status or dialect.default_auth_status
            self._json(status, dialect.error_body(status, auth=True))
        elif ordinal <= script.fail_first:
            self._json(
                script.fail_status,
                dialect.error_body(script.fail_status, message=script.fail_message),
            )
        else:
            self._stream(script)
