"""The ceiling: a bare `websockets` server streaming the same words at the same pace.

No Django, no database, no channel layer. It speaks just enough of the chat protocol for the
load client (chat.send -> chat.accepted, chat.delta..., chat.done) and coalesces deltas with
the same rule as the real server (first delta at once, then one frame per window), so the
frames it sends weigh what ours weigh. Usage:

    python -m bench.ceiling --port 8101 --delay-ms 20 --words 200 --coalesce-ms 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid

from websockets.asyncio.server import ServerConnection, serve

from bench.common import tokens


class Ceiling:
    def __init__(self, delay_ms: float, words: int, coalesce_ms: float) -> None:
        self.delay = delay_ms / 1000
        self.tokens = tokens(words)
        self.window = coalesce_ms / 1000

    async def handler(self, ws: ServerConnection) -> None:
        async for message in ws:
            frame = json.loads(message)
            if frame.get("type") != "chat.send":
                await ws.send(json.dumps({"type": "chat.error", "code": "invalid"}))
                continue
            await self.turn(ws, frame)

    async def turn(self, ws: ServerConnection, frame: dict) -> None:
        conversation_id = str(uuid.uuid4())
        message_id = str(uuid.uuid4())
        await ws.send(
            json.dumps(
                {
                    "type": "chat.accepted",
                    "conversation_id": conversation_id,
                    "client_id": frame.get("client_id"),
                    "user_message_id": str(uuid.uuid4()),
                    "message_id": message_id,
                    "persona": "assistant",
                    "title": "bench",
                }
            )
        )
        seq = 0
        buffer: list[str] = []
        sent: list[str] = []
        last_flush = 0.0

        async def flush() -> None:
            nonlocal seq, last_flush
            seq += 1
            text = "".join(buffer)
            buffer.clear()
            sent.append(text)
            last_flush = time.monotonic()
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

        for token in self.tokens:
            if self.delay:
                await asyncio.sleep(self.delay)
            buffer.append(token)
            if seq == 0 or time.monotonic() - last_flush >= self.window:
                await flush()
        if buffer:
            await flush()
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--coalesce-ms", type=float, default=40)
    args = parser.parse_args()
    ceiling = Ceiling(args.delay_ms, args.words, args.coalesce_ms)
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


if __name__ == "__main__":
    asyncio.run(main())
