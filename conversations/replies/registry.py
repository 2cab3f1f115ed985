"""Where this worker's replies are found, and every limit on starting one.

One `Busy` for every "not now": the conversation already has a reply in flight, the user has
`MAX_GENERATIONS_PER_USER` (across workers: `replylog.slot_take`), the worker has
`MAX_GENERATIONS_PER_WORKER`, or it is draining for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from conversations import metrics
from conversations.context import TurnContext
from conversations.errors import Busy
from conversations.llm.base import Provider, ProviderRequest
from conversations.replies.generation import Generation
from conversations.replies.outbox import Outbox

if TYPE_CHECKING:
    from conversations.replies.reply import RemoteReply


def user_busy() -> Busy:
    return Busy(
        f"You already have {settings.MAX_GENERATIONS_PER_USER} replies being "
        "generated; wait for one to finish."
    )


@dataclass
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

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry.release(self)


@dataclass
class Registry:
    generations: dict[uuid.UUID, Generation] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    side_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Replies of other workers followed from here, by conversation (their followers' pumps).
    remote: dict[uuid.UUID, RemoteReply] = field(default_factory=dict)
    draining: bool = False
    sockets: set[Any] = field(default_factory=set)  # open consumers, closed on shutdown

    def get(self, conversation_id: uuid.UUID) -> Generation | None:
        return self.generations.get(conversation_id)

    def _count_for(self, user_id: int) -> int:
        running = sum(1 for g in self.generations.values() if g.user_id == user_id)
        return running + sum(1 for r in self.reservations if r.user_id == user_id)

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
            conversation_id in self.generations
            or any(r.conversation_id == conversation_id for r in self.reservations)
        ):
            raise Busy("A reply is already being generated in this conversation.")
        if self._count_for(user_id) >= settings.MAX_GENERATIONS_PER_USER:
            raise user_busy()
        if len(self.generations) + len(self.reservations) >= settings.MAX_GENERATIONS_PER_WORKER:
            raise Busy("The server is busy; try again in a moment.")
        reservation = Reservation(self, user_id, conversation_id, client_id)
        self.reservations.append(reservation)
        return reservation

    def beginning(self, conversation_id: uuid.UUID, client_id: uuid.UUID) -> bool:
        """Whether a turn for this very client_id is beginning here (a re-send racing it)."""
        return any(
            r.conversation_id == conversation_id and r.client_id == client_id
            for r in self.reservations
        )

    def release(self, reservation: Reservation) -> None:
        with contextlib.suppress(ValueError):
            self.reservations.remove(reservation)

    def start(
        self,
        ctx: TurnContext,
        provider: Provider,
        request: ProviderRequest,
        reservation: Reservation,
    ) -> Generation:
        reservation.release()
        if ctx.conversation_id in self.generations:
            raise Busy("A reply is already being generated in this conversation.")
        generation = Generation(ctx, provider, request, self)
        generation.slot = reservation.slot
        generation.claim = reservation.claim
        self.generations[ctx.conversation_id] = generation
        # The task belongs to the process: a socket that goes away does not cancel it.
        task = asyncio.get_running_loop().create_task(generation.run())
        generation.task = task
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

    def unfollow_all(self, key: str) -> None:
        for generation in list(self.generations.values()):
            generation.unfollow(key)
        for remote in list(self.remote.values()):
            remote.unfollow(key)

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
