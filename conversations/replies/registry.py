"""Where this worker's replies are found, and every limit on starting one.

One `Busy` for every "not now": the conversation already has a reply in flight, the user has
`MAX_GENERATIONS_PER_USER` (across workers: `replylog.slot_take`), the worker has
`MAX_GENERATIONS_PER_WORKER`, or it is draining for a restart.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from conversations import metrics
from conversations.context import TurnContext
from conversations.errors import Busy
from conversations.llm.base import Provider, ProviderRequest
from conversations.replies.generation import Generation, ModelStream
from conversations.replies.outbox import Outbox

if TYPE_CHECKING:
    from conversations.replies.reply import RemoteReply


def user_busy() -> Busy:
    return Busy(
        f"You already have {settings.MAX_GENERATIONS_PER_USER} replies being "
        "generated; wait for one to finish."
    )


@dataclass(eq=False)  # each one is itself: held in a set, found by identity
class Reservation:
    """A slot held while a turn begins, so limits hold before the database is reached."""

    registry: Registry
    user_id: int
    conversation_id: uuid.UUID | None
    client_id: uuid.UUID | None = None
    # The user's reply slot across workers (Redis), held from here until the reply ends.
    slot: str = field(default_factory=lambda: f"slot:{uuid.uuid4()}")
    # The conversation's claim across workers (Redis), once taken; the generation keeps it.
    claim: str | None = None
    released: bool = False
    # A new conversation's first message: its reply once started here, or None when the
    # turn ended without one. A re-send of the message meanwhile waits on it (`twin_of`).
    outcome: asyncio.Future[Generation | None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry.release(self)

    def settle(self, generation: Generation | None) -> None:
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(generation)


@dataclass
class Registry:
    generations: dict[uuid.UUID, Generation] = field(default_factory=dict)
    reservations: set[Reservation] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    side_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Replies of other workers followed from here, by conversation (their followers' pumps).
    remote: dict[uuid.UUID, RemoteReply] = field(default_factory=dict)
    draining: bool = False
    sockets: set[Any] = field(default_factory=set)  # open consumers, closed on shutdown
    # Each user's generations and reservations here, and the reservations of each existing
    # conversation: a turn's checks look them up rather than scan every reply in flight
    # (at 1,000 streams, that scan was a few percent of the worker's CPU).
    _per_user: collections.Counter[int] = field(default_factory=collections.Counter, init=False)
    _reserving: dict[uuid.UUID, list[Reservation]] = field(default_factory=dict, init=False)
    # The first messages of new conversations beginning here, by user and client_id.
    _first_messages: dict[tuple[int, uuid.UUID], Reservation] = field(
        default_factory=dict, init=False
    )

    def get(self, conversation_id: uuid.UUID) -> Generation | None:
        return self.generations.get(conversation_id)

    def _count(self, user_id: int, change: int) -> None:
        count = self._per_user[user_id] + change
        if count > 0:
            self._per_user[user_id] = count
        else:
            del self._per_user[user_id]

    def reserve(
        self,
        *,
        user_id: int,
        conversation_id: uuid.UUID | None,
        client_id: uuid.UUID | None = None,
    ) -> Reservation:
        """Hold a place on this worker; the user's limit across workers is `slot_take`'s."""
        if self.draining:
            raise Busy("This server is restarting; reconnect and try again.")
        if conversation_id is not None and (
            conversation_id in self.generations or conversation_id in self._reserving
        ):
            raise Busy("A reply is already being generated in this conversation.")
        if self._per_user[user_id] >= settings.MAX_GENERATIONS_PER_USER:
            raise user_busy()
        if len(self.generations) + len(self.reservations) >= settings.MAX_GENERATIONS_PER_WORKER:
            raise Busy("The server is busy; try again in a moment.")
        reservation = Reservation(self, user_id, conversation_id, client_id)
        self.reservations.add(reservation)
        self._count(user_id, 1)
        if conversation_id is not None:
            self._reserving.setdefault(conversation_id, []).append(reservation)
        elif client_id is not None:
            reservation.outcome = asyncio.get_running_loop().create_future()
            self._first_messages.setdefault((user_id, client_id), reservation)
        return reservation

    def twin_of(self, user_id: int, client_id: uuid.UUID) -> Reservation | None:
        """The first send of a new conversation's first message, still beginning here."""
        return self._first_messages.get((user_id, client_id))

    def beginning(self, conversation_id: uuid.UUID, client_id: uuid.UUID) -> bool:
        """Whether a turn for this very client_id is beginning here (a re-send racing it)."""
        return any(r.client_id == client_id for r in self._reserving.get(conversation_id, ()))

    def release(self, reservation: Reservation) -> None:
        if reservation not in self.reservations:
            return
        self.reservations.remove(reservation)
        self._count(reservation.user_id, -1)
        reservation.settle(None)  # a no-op once started
        if reservation.client_id is not None:
            key = (reservation.user_id, reservation.client_id)
            if self._first_messages.get(key) is reservation:
                del self._first_messages[key]
        if reservation.conversation_id is not None:
            held = self._reserving[reservation.conversation_id]
            held.remove(reservation)
            if not held:
                del self._reserving[reservation.conversation_id]

    def start(
        self,
        ctx: TurnContext,
        provider: Provider,
        request: ProviderRequest,
        reservation: Reservation,
        model: ModelStream | None = None,
    ) -> Generation:
        """`model`: the provider's stream, where the turn started it already."""
        if ctx.conversation_id in self.generations:
            reservation.release()
            if model is not None:
                model.cancel()
            raise Busy("A reply is already being generated in this conversation.")
        generation = Generation(ctx, provider, request, self, model)
        generation.slot = reservation.slot
        generation.claim = reservation.claim
        self.generations[ctx.conversation_id] = generation
        self._count(ctx.user_id, 1)
        reservation.settle(generation)  # a re-send waiting on this turn follows this reply
        reservation.release()
        # The task belongs to the process: a socket that goes away does not cancel it.
        task = generation.start()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return generation

    def spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Side work of a turn (e.g. naming it) that belongs to the process, like generations."""
        task = asyncio.get_running_loop().create_task(work)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)
        return task

    def forget(self, generation: Generation) -> None:
        if self.generations.get(generation.conversation_id) is generation:
            del self.generations[generation.conversation_id]
            self._count(generation.user_id, -1)

    async def drain(self, timeout: float) -> None:
        """Let generations finish for `timeout` seconds, then save the rest as interrupted."""
        self.draining = True
        tasks = list(self.tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for generation in list(self.generations.values()):
            generation.interrupt()
        if pending:
            await asyncio.wait(pending)


registry = Registry()


def _socket_bytes(held: Callable[[Outbox], int]) -> Callable[[], float]:
    return lambda: float(sum(held(socket.outbox) for socket in list(registry.sockets)))


# Read at scrape time from the open sockets themselves: no bookkeeping to drift.
metrics.SOCKET_QUEUED_BYTES.set_function(_socket_bytes(lambda outbox: outbox.queued_bytes))
metrics.SOCKET_SERVER_BYTES.set_function(_socket_bytes(lambda outbox: outbox.server_backlog))
