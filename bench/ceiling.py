"""The ceiling: a bare `websockets` server streaming the same words at the same pace.

No Django, no database, no channel layer. It speaks just enough of the chat protocol for the
load client and sends the frames a turn of the real server sends for a new conversation with
the demo provider: chat.accepted, conversation.updated (the title), chat.delta..., chat.done.
Deltas are coalesced with the app's own rule (conversations/replies/generation.py): the
first delta at once, then whatever arrived, flushed at each tick of the app's own
`FlushTicker` (conversations/replies/ticker.py, no Django in it). The model's words are
paced against absolute deadlines, as in the demo provider. `--loop uvloop` runs it on the
event loop Uvicorn uses. Usage:

    python -m bench.ceiling --port 8101 --delay-ms 20 --words 200 --coalesce-ms 40 \
        --coalesce-max-ms 160 --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import uuid

from websockets.asyncio.server import ServerConnection, serve

from bench.common import tokens
from conversations.replies.ticker import Pacer, ticker


class Ceiling:
    def __init__(
        self, delay_ms: float, words: int, coalesce_ms: float, coalesce_max_ms: float
    ) -> None:
        self.delay = delay_ms / 1000
        self.tokens = tokens(words)
        self.window = coalesce_ms / 1000
        self.widest = coalesce_max_ms / 1000

    async def handler(self, ws: ServerConnection) -> None:
        async for message in ws:
            frame = json.loads(message)
            if frame.get("type") != "chat.send":
                await ws.send(json.dumps({"type": "chat.error", "code": "invalid"}))
                continue
            await self.turn(ws, frame)

    async def model(self, buffer: list[str], first: asyncio.Event) -> None:
        """The demo provider's pacing: word i is due at start + (i + 1) * delay."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, token in enumerate(self.tokens):
            if self.delay:
                await asyncio.sleep(max(0.0, start + (index + 1) * self.delay - loop.time()))
            buffer.append(token)
            first.set()

    async def turn(self, ws: ServerConnection, frame: dict) -> None:
        conversation_id = str(uuid.uuid4())
        message_id = str(uuid.uuid4())
        title = "Benchmark question number"
        await ws.send(
            json.dumps(
                {
                    "type": "chat.accepted",
                    "conversation_id": conversation_id,
                    "client_id": frame.get("client_id"),
                    "user_message_id": str(uuid.uuid4()),
                    "message_id": message_id,
                    "persona": "assistant",
                    "title": title,
                    "parent_id": None,
                    "regenerate": False,
                }
            )
        )
        # The app announces a new conversation's (heuristic) title to the user's sockets.
        await ws.send(
            json.dumps(
                {"type": "conversation.updated", "conversation_id": conversation_id, "title": title}
            )
        )
        seq = 0
        buffer: list[str] = []
        sent: list[str] = []
        first = asyncio.Event()

        async def flush() -> None:
            nonlocal seq
            seq += 1
            text = "".join(buffer)
            buffer.clear()
            sent.append(text)
            await ws.send(
                json.dumps(
                    {
                        "type": "chat.delta",
                        "conversation_id": conversation_id,
                        "message_id": message_id,
                        "seq": seq,
                        "text": text,
                    }
                )
            )

        # Generation._stream: wait for the first word, then flush at each of the process's
        # flush ticks (the app's own FlushTicker: one timer, the window widened to the lag, and
        # while short of CPU doubled up to the widest).
        producer = asyncio.ensure_future(self.model(buffer, first))
        try:
            waiter = asyncio.ensure_future(first.wait())
            try:
                await asyncio.wait({producer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            pacer = Pacer(ticker, producer)
            while True:
                if buffer:
                    await flush()
                if producer.done():
                    break
                await pacer.next(self.window, self.widest)
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
        await ws.send(
            json.dumps(
                {
                    "type": "chat.done",
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "status": "complete",
                    "content": "".join(sent),
                    "usage": {"input_tokens": None, "output_tokens": len(self.tokens)},
                    "error": None,
                }
            )
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--coalesce-ms", type=float, default=40)
    # The app's STREAM_COALESCE_MAX_MS: the widest the window grows while short of CPU.
    parser.add_argument("--coalesce-max-ms", type=float, default=160)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    ceiling = Ceiling(args.delay_ms, args.words, args.coalesce_ms, args.coalesce_max_ms)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # Same as the servers under test: no compression, no keepalive pings during the run.
    async with serve(
        ceiling.handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,
        max_size=2**20,
        backlog=4096,
    ):
        await stop


def run() -> None:
    args = parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    run()
