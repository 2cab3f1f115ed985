"""The shared reply log in Redis: what lets a reply outlive its worker.

With `REDIS_URL` set, every generation keeps its deltas in a Redis Stream
(`chat:log:<message_id>`) and announces itself under `chat:gen:<conversation_id>`, kept alive
by its worker's heartbeat. Any worker can then replay and follow a reply, stop it (a message on
`chat:control`), or, when the heartbeat has stopped, save what the log holds as `interrupted`.

The costs that grow with the number of replies in flight stay with the worker that streams
them: a worker's deltas go out in one pipeline per batch (`LogAppender`), and its heartbeat
is one pipeline for all its generations. Finding the dead ones reads one sorted set
(`chat:beats`), not every generation in Redis.

Every call here may fail when Redis is away; callers treat that as "degraded": the socket's
own stream goes on in its worker, only the cross-worker features pause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, overload

import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

CONTROL_CHANNEL = "chat:control"


def gen_key(conversation_id: uuid.UUID | str) -> str:
    """The generation in flight in a conversation: its GenerationMeta as JSON."""
    return f"chat:gen:{conversation_id}"


def claim_key(conversation_id: uuid.UUID | str) -> str:
    """Who holds a conversation for one turn: a claim token, from before the turn begins
    until its reply is finished."""
    return f"chat:claim:{conversation_id}"


def log_key(message_id: uuid.UUID | str) -> str:
    return f"chat:log:{message_id}"


def heartbeat_key(message_id: uuid.UUID | str) -> str:
    """Kept alive for each generation as well, for workers of the previous release during a
    rolling deploy: they find orphans by scanning for generations whose key lapsed."""
    return f"chat:hb:{message_id}"


# Every generation in flight, by message id: scored by the time of its last heartbeat, and
# its GenerationMeta. A recovery round reads the stale end of the set, whatever the number
# of generations in flight.
BEATS_KEY = "chat:beats"
GENERATIONS_KEY = "chat:generations"


@dataclass(frozen=True)
class GenerationMeta:
    conversation_id: str
    message_id: str
    user_message_id: str
    client_id: str
    user_id: int
    worker: str
    started: float
    claim: str = ""  # the token under claim_key, when the turn took one

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | bytes) -> GenerationMeta:
        return cls(**json.loads(raw))


# redis-py's async types are loose unions (bytes | str | None); this module decodes responses.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
_down_until = 0.0


class Degraded(Exception):
    """Redis is away (or was moments ago): cross-worker features pause, streams go on."""


def mark_down(exc: BaseException) -> None:
    global _down_until
    if time.monotonic() >= _down_until:
        logger.warning("Redis unavailable, running degraded for a few seconds: %s", exc)
    _down_until = time.monotonic() + settings.REDIS_RETRY_SECONDS


def is_down() -> bool:
    return time.monotonic() < _down_until


T = TypeVar("T")
D = TypeVar("D")


@overload
async def guarded(work: Coroutine[Any, Any, T]) -> T | None: ...


@overload
async def guarded(work: Coroutine[Any, Any, T], default: D) -> T | D: ...


async def guarded(work: Coroutine[Any, Any, T], default: Any = None) -> Any:
    """Await a Redis call; on failure, note the outage and return `default`."""
    if is_down():
        work.close()
        return default
    try:
        return await work
    except (TimeoutError, aioredis.RedisError, OSError) as exc:
        mark_down(exc)
        return default


def client() -> Any:
    """One client per event loop (redis.asyncio connections belong to the loop that made them)."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        # A call waits for one of the pool's connections rather than failing: redis-py's
        # default pool raises once 100 calls are in flight, and a flood of messages at once
        # then marked Redis down and lifted the limits counted there.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_TIMEOUT_SECONDS,
            decode_responses=True,
            socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
        )
        found = aioredis.Redis.from_pool(pool)
        _clients[loop] = found
    return found


async def claim(conversation_id: uuid.UUID, token: str) -> bool:
    """Hold the conversation for one turn across all workers (before anything is saved)."""
    redis = client()
    if redis is None:
        return True
    ok = await redis.set(claim_key(conversation_id), token, nx=True, ex=settings.GENERATION_TTL)
    return bool(ok)


async def holder(conversation_id: uuid.UUID) -> str | None:
    """The claim token that holds the conversation, if any."""
    redis = client()
    if redis is None:
        return None
    raw = await redis.get(claim_key(conversation_id))
    return str(raw) if raw else None


async def unclaim(conversation_id: uuid.UUID, token: str) -> None:
    redis = client()
    if redis is None:
        return
    # Only our own claim: compare and delete in one step.
    await redis.eval(_DELETE_IF, 1, claim_key(conversation_id), token)


_DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
# The generation's marker, if it is still this reply's (a newer turn may have replaced it).
_DELETE_GENERATION = """
local raw = redis.call('get', KEYS[1])
if raw and cjson.decode(raw)['message_id'] == ARGV[1] then return redis.call('del', KEYS[1]) end
"""


async def announce(meta: GenerationMeta) -> None:
    redis = client()
    if redis is None:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(gen_key(meta.conversation_id), meta.dumps(), ex=settings.GENERATION_TTL)
        pipe.set(heartbeat_key(meta.message_id), "1", ex=settings.HEARTBEAT_TTL)
        pipe.hset(GENERATIONS_KEY, meta.message_id, meta.dumps())
        pipe.zadd(BEATS_KEY, {meta.message_id: time.time()})
        pipe.xadd(log_key(meta.message_id), {"meta": meta.dumps()})
        pipe.expire(log_key(meta.message_id), settings.REPLY_LOG_TTL)
        await pipe.execute()


async def append(message_id: uuid.UUID, seq: int, text: str) -> bool:
    """One entry, awaited on its own (recovery's); a live reply's go through `appender`."""
    redis = client()
    if redis is not None:
        await redis.xadd(log_key(message_id), {"seq": str(seq), "text": text})
    return True


_Entries = tuple[str, int, list[str], "asyncio.Future[bool]"]


class LogAppender:
    """Appends the deltas of every generation on an event loop, one pipeline per batch.

    A batch is what was handed in during one pass of the loop: the flush tick wakes every
    stream at once, so a tick's frames, however many streams made them, go out in one round
    trip instead of an awaited XADD each. Each caller gets a future: True once Redis has
    the entries, False when it is away (the caller hands them in again later; one batch in
    flight per reply keeps its log in seq order).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list[_Entries] = []
        self._writing: set[asyncio.Task[None]] = set()

    def append(
        self, message_id: uuid.UUID | str, first_seq: int, texts: list[str]
    ) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per test)
            self._loop, self._batch, self._writing = loop, [], set()
        written: asyncio.Future[bool] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send)
        self._batch.append((log_key(message_id), first_seq, texts, written))
        return written

    def _send(self) -> None:
        assert self._loop is not None
        batch, self._batch = self._batch, []
        task = self._loop.create_task(self._write(batch))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: list[_Entries]) -> None:
        ok = False
        try:
            ok = await guarded(_xadd_all(batch), False)
        finally:
            for *_, written in batch:
                if not written.done():
                    written.set_result(ok)


async def _xadd_all(batch: list[_Entries]) -> bool:
    redis = client()
    if redis is None:
        return True
    async with redis.pipeline(transaction=False) as pipe:
        for key, first_seq, texts, _ in batch:
            for seq, text in enumerate(texts, start=first_seq):
                pipe.xadd(key, {"seq": str(seq), "text": text})
        await pipe.execute()
    return True


# The process's appender: every generation on this event loop shares it.
appender = LogAppender()


UNSAVED_KEY = "chat:unsaved"


async def finish(
    meta: GenerationMeta, final: dict[str, Any], *, unsaved_status: str | None = None
) -> None:
    """Append the final frame and drop the markers of a generation in flight.

    A reply whose save failed keeps its log for a week and is listed under `chat:unsaved`,
    where `manage.py recover_streams` finds it.
    """
    redis = client()
    if redis is None:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(log_key(meta.message_id), {"final": json.dumps(final)})
        if unsaved_status:
            pipe.expire(log_key(meta.message_id), settings.REPLY_LOG_KEEP_SECONDS)
            pipe.hset(UNSAVED_KEY, meta.message_id, json.dumps([meta.dumps(), unsaved_status]))
        else:
            pipe.expire(log_key(meta.message_id), settings.REPLY_LOG_TTL)
        pipe.delete(heartbeat_key(meta.message_id))
        pipe.zrem(BEATS_KEY, meta.message_id)
        pipe.hdel(GENERATIONS_KEY, meta.message_id)
        pipe.eval(_DELETE_GENERATION, 1, gen_key(meta.conversation_id), meta.message_id)
        if meta.claim:
            pipe.eval(_DELETE_IF, 1, claim_key(meta.conversation_id), meta.claim)
        await pipe.execute()


async def unsaved() -> list[tuple[GenerationMeta, str]]:
    redis = client()
    if redis is None:
        return []
    found = []
    for raw in (await redis.hgetall(UNSAVED_KEY)).values():
        meta_raw, status = json.loads(raw)
        found.append((GenerationMeta.loads(meta_raw), status))
    return found


async def forget_unsaved(message_id: str) -> None:
    redis = client()
    if redis is not None:
        await redis.hdel(UNSAVED_KEY, message_id)


async def beat(metas: list[GenerationMeta], slots: list[tuple[int, str]]) -> None:
    """One round trip a heartbeat: this worker's generations are alive, and so are the
    reply slots (user, token) they hold."""
    redis = client()
    if redis is None or not metas:
        return
    now = time.time()
    lapse = now + max(settings.HEARTBEAT_TTL * 2, 10)
    async with redis.pipeline(transaction=False) as pipe:
        # Only members still there: a reply finished since the list was taken stays gone.
        pipe.zadd(BEATS_KEY, {meta.message_id: now for meta in metas}, xx=True)
        for meta in metas:
            pipe.set(heartbeat_key(meta.message_id), "1", ex=settings.HEARTBEAT_TTL)
            pipe.expire(gen_key(meta.conversation_id), settings.GENERATION_TTL)
            if meta.claim:
                pipe.expire(claim_key(meta.conversation_id), settings.GENERATION_TTL)
        for user_id, token in slots:
            pipe.zadd(slots_key(user_id), {token: lapse}, xx=True)
        await pipe.execute()


async def active(conversation_id: uuid.UUID) -> GenerationMeta | None:
    redis = client()
    if redis is None:
        return None
    raw = await redis.get(gen_key(conversation_id))
    return GenerationMeta.loads(raw) if raw else None


def slots_key(user_id: int) -> str:
    return f"chat:user:{user_id}:slots"


# Check and take a slot in one step, so workers admitting turns at the same moment cannot
# each see room for one more. Members are slot tokens scored by when they lapse: a worker
# that dies stops renewing its slots, and they lapse on their own.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
SLOT_HOLD_SECONDS = 60  # a turn beginning; a running generation renews with its heartbeat


async def slot_take(user_id: int, token: str, limit: int) -> bool:
    """Take one of the user's `limit` reply slots across all workers; False when all are
    taken. True when Redis is not configured (the worker's own count then decides)."""
    redis = client()
    if redis is None:
        return True
    now = time.time()
    taken = await redis.eval(
        _TAKE_SLOT,
        1,
        slots_key(user_id),
        now,
        limit,
        now + SLOT_HOLD_SECONDS,
        token,
        settings.GENERATION_TTL,
    )
    return bool(taken)


async def slot_release(user_id: int, token: str) -> None:
    redis = client()
    if redis is not None:
        await redis.zrem(slots_key(user_id), token)


async def publish_stop(conversation_id: uuid.UUID) -> None:
    redis = client()
    if redis is not None:
        await redis.publish(
            CONTROL_CHANNEL, json.dumps({"op": "stop", "conversation_id": str(conversation_id)})
        )


async def rate_hit(user_id: int) -> float | None:
    """Count one message; the seconds to wait when over the per-minute limit, else None."""
    redis = client()
    if redis is None:
        return None
    now = time.time()
    key = f"chat:rate:{user_id}:{int(now // 60)}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 70)
        count, _ = await pipe.execute()
    if int(count) > settings.MESSAGES_PER_MINUTE:
        return round(60 - now % 60, 1)
    return None


async def rate_refund(user_id: int) -> None:
    redis = client()
    if redis is None:
        return
    key = f"chat:rate:{user_id}:{int(time.time() // 60)}"
    await redis.eval(
        "if tonumber(redis.call('get', KEYS[1]) or '0') > 0 then redis.call('decr', KEYS[1]) end",
        1,
        key,
    )


async def entries(
    message_id: uuid.UUID | str, after_seq: int, *, block_ms: int = 1000
) -> AsyncIterator[dict[str, str]]:
    """The log from after `after_seq`: replayed, then followed live, up to the final entry."""
    redis = client()
    if redis is None:
        return
    key = log_key(message_id)
    last_id = "0-0"
    idle_since = time.monotonic()
    while True:
        batch = await redis.xread({key: last_id}, count=500, block=block_ms)
        if not batch:
            # No entry for a while: the heartbeat tells whether anyone still writes here.
            if time.monotonic() - idle_since > settings.FOLLOW_GIVE_UP_SECONDS:
                return
            continue
        idle_since = time.monotonic()
        for entry_id, fields in batch[0][1]:
            last_id = entry_id
            if "seq" in fields and int(fields["seq"]) <= after_seq:
                continue
            yield fields
            if "final" in fields:
                return


async def log_text(message_id: str) -> tuple[str, dict[str, Any] | None]:
    """The reply so far from the log, and its final frame when it has one."""
    redis = client()
    assert redis is not None
    parts: list[str] = []
    final = None
    for _, fields in await redis.xrange(log_key(message_id)):
        if "text" in fields:
            parts.append(fields["text"])
        if "final" in fields:
            final = json.loads(fields["final"])
    return "".join(parts), final


async def last_seq(message_id: uuid.UUID | str) -> int:
    redis = client()
    if redis is None:
        return 0
    for _, fields in await redis.xrevrange(log_key(message_id), count=5):
        if "seq" in fields:
            return int(fields["seq"])
    return 0


async def orphans(grace: float) -> list[GenerationMeta]:
    """Generations whose heartbeat has stopped: their worker died.

    One read of the beats' stale end, then a look at each stale generation only: a round
    costs the same with ten replies in flight as with a hundred thousand.
    """
    redis = client()
    if redis is None:
        return []
    now = time.time()
    stale = await redis.zrangebyscore(BEATS_KEY, "-inf", now - grace)
    if not stale:
        return []
    found, gone = [], []
    for message_id, raw in zip(stale, await redis.hmget(GENERATIONS_KEY, stale), strict=True):
        if raw is None:  # finished between the two reads
            gone.append(message_id)
            continue
        meta = GenerationMeta.loads(raw)
        if now - meta.started < grace:
            continue
        # A busy worker may beat late; a reply whose log still grows is alive.
        last = await redis.xrevrange(log_key(meta.message_id), count=1)
        if last and now * 1000 - int(last[0][0].split("-")[0]) < grace * 1000:
            continue
        found.append(meta)
    if gone:
        await redis.zrem(BEATS_KEY, *gone)
    return found


async def lock_recovery(message_id: str) -> bool:
    redis = client()
    assert redis is not None
    return bool(await redis.set(f"chat:recovering:{message_id}", "1", nx=True, ex=60))


async def ping() -> bool:
    redis = client()
    if redis is None:
        return True
    return bool(await redis.ping())
