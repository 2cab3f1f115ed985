"""Local HTTP servers that speak the real streaming wire formats of Gemini and OpenAI.

They run the SDKs end to end (request building, SSE parsing, error mapping) without the
internet. Each server records what it received and follows a `Script` set per test.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conversations.llm import ProviderError, Usage

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def load_events(name: str) -> list[dict[str, Any]]:
    """The events of an example stream kept in tests/data/."""
    events: list[dict[str, Any]] = json.loads((DATA_DIR / name).read_text())
    return events


def refused_url() -> str:
    """A local URL where nothing listens, so connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def unanswered_url() -> Iterator[str]:
    """A local URL whose connection attempts hang: the listener's backlog is full (Linux drops
    further SYNs), so the client's connect timeout is what ends the wait."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"


def assert_closed_before_the_loop_runs_again(server: WireServer) -> None:
    """The upstream connection was closed by the provider itself, not later by the GC.

    Waiting blocks the event loop on purpose: a stream left for the garbage collector is only
    closed by tasks the loop would run later, so it cannot pass this check by luck.
    """
    assert server.client_closed.wait(2), "the server never saw the client hang up"


@dataclass
class Reply:
    """What a consumer of `Provider.stream()` saw."""

    deltas: list[str] = field(default_factory=list)
    usage: Usage | None = None
    error: ProviderError | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def collect(stream: AsyncIterator[str | Usage]) -> Reply:
    reply = Reply()
    try:
        async for event in stream:
            if isinstance(event, Usage):
                reply.usage = event
            else:
                reply.deltas.append(event)
    except ProviderError as exc:
        reply.error = exc
    return reply


@dataclass
class Script:
    """How the server answers. The defaults stream `events` at once and end cleanly."""

    events: list[dict[str, Any]] = field(default_factory=list)
    # The first `fail_first` requests are answered with `fail_status` and an error body.
    fail_first: int = 0
    fail_status: int = 503
    fail_message: str = ""
    # Seconds before the first event, between events, and before chosen events (a stall).
    first_event_delay: float = 0.0
    event_pause: float = 0.0
    pause_before: dict[int, float] = field(default_factory=dict)
    # Close the connection mid-body after this many events (no clean end of stream).
    drop_after: int | None = None
    # Requests whose API key differs are refused the way the real service refuses them.
    api_key: str = "test-key"
    auth_status: int | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class Dialect:
    """What differs between the services: routes, auth, error bodies, event framing."""

    default_auth_status = 401

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        raise NotImplementedError

    def api_key(self, headers: dict[str, str], query: dict[str, list[str]]) -> str:
        raise NotImplementedError

    def error_body(self, status: int, *, auth: bool = False, message: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"

    def end_of_stream(self) -> bytes:
        return b""


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiDialect(Dialect):
    """`POST /{version}/models/{model}:streamGenerateContent?alt=sse`, key in x-goog-api-key."""

    # The Gemini API answers a malformed or unknown key with 400 API_KEY_INVALID.
    default_auth_status = 400
    _path = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):streamGenerateContent$")

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return bool(self._path.match(path)) and query.get("alt") == ["sse"]

    def api_key(self, headers: dict[str, str], query: dict[str, list[str]]) -> str:
        return headers.get("x-goog-api-key") or (query.get("key") or [""])[0]

    def error_body(self, status: int, *, auth: bool = False, message: str = "") -> dict[str, Any]:
        message = message or {
            429: "Resource has been exhausted (e.g. check quota).",
            503: "The model is overloaded. Please try again later.",
        }.get(status, "The service answered with an error.")
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if auth:
            error["message"] = (
                "API key not valid. Please pass a valid API key."
                if status == 400
                else "Method doesn't allow unregistered callers."
            )
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return {"error": error}

    @staticmethod
    def model(path: str) -> str:
        match = GeminiDialect._path.match(path)
        return match["model"] if match else ""

    @staticmethod
    def version(path: str) -> str:
        match = GeminiDialect._path.match(path)
        return match["version"] if match else ""


class OpenAIDialect(Dialect):
    """`POST /v1/chat/completions`, bearer key, `data: [DONE]` at the end."""

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return path == "/v1/chat/completions"

    def api_key(self, headers: dict[str, str], query: dict[str, list[str]]) -> str:
        return headers.get("authorization", "").removeprefix("Bearer ")

    def error_body(self, status: int, *, auth: bool = False, message: str = "") -> dict[str, Any]:
        if auth:
            return {
                "error": {
                    "message": "Incorrect API key provided: wr***ey. You can find your API key "
                    "at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        code = {429: "rate_limit_exceeded"}.get(status, "server_error")
        return {
            "error": {
                "message": message or f"Scripted failure (HTTP {status}).",
                "type": "requests" if status == 429 else "server_error",
                "param": None,
                "code": code,
            }
        }

    def event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def end_of_stream(self) -> bytes:
        return b"data: [DONE]\n\n"


class WireServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 with a free port."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.script = Script()
        self.requests: list[RecordedRequest] = []
        # Set when a client hung up before its streamed answer was complete.
        self.client_closed = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> WireServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def record(self, request: RecordedRequest) -> int:
        """Keep the request; answer its ordinal (1 for the first)."""
        with self._lock:
            self.requests.append(request)
            return len(self.requests)

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-request in several tests on purpose; that is not worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler_for(server: WireServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_StreamingHandler):
        wire = server

    return Handler


class _StreamingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wire: WireServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's output about the tests, not about requests

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        dialect, script = self.wire.dialect, self.wire.script
        ordinal = self.wire.record(RecordedRequest("POST", url.path, query, headers, body))

        if not dialect.route(url.path, query):
            self._json(404, dialect.error_body(404))
        elif dialect.api_key(headers, query) != script.api_key:
            status = script.auth_status or dialect.default_auth_status
            self._json(status, dialect.error_body(status, auth=True))
        elif ordinal <= script.fail_first:
            error = dialect.error_body(script.fail_status, message=script.fail_message)
            self._json(script.fail_status, error)
        else:
            self._stream(script)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, script: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()
        for index, payload in enumerate(script.events):
            pause = script.pause_before.get(
                index, script.first_event_delay if index == 0 else script.event_pause
            )
            if not self._wait(pause):
                return
            if script.drop_after is not None and index >= script.drop_after:
                self._drop()
                return
            if not self._chunk(self.wire.dialect.event(payload)):
                return
        tail = self.wire.dialect.end_of_stream()
        if not tail or self._chunk(tail):
            self._chunk(b"")

    def _chunk(self, data: bytes) -> bool:
        """Write one chunk of the chunked body (an empty one ends it)."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            self.wire.client_closed.set()
            self.close_connection = True
            return False
        return True

    def _wait(self, seconds: float) -> bool:
        """Sleep, watching the socket: False as soon as the client hangs up."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.wire.stopping.is_set():
                self.close_connection = True
                return False
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
            if readable and self._peer_closed():
                self.wire.client_closed.set()
                self.close_connection = True
                return False
        return True

    def _peer_closed(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _drop(self) -> None:
        """Cut the connection mid-body, as a crashed upstream or a proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
