"""The broker-facing pieces of the runtime, in memory: queues, deliveries and their acks, the
copies into retry tiers and dead-letter queues, completion events, the status ledger, and a
virtual clock for the retry ladder.

Each stands in for what RabbitMQ (or the store) does with what the real runtime sends it, and
no more: a delivery is acked, nacked or rejected through a channel-like object the real
`AckCoalescer` talks to; a copy to a retry tier comes back to the subscription's queue through
the default exchange once its tier's delay has passed on the virtual clock, as a TTL queue's
dead-lettering brings it back; a copy to `{ns}.dlx` lands in the subscription's DLQ.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiormq.abc

from consumers.dead_letter import (
    ATTEMPTS,
    ERROR_CLASS,
    ERROR_MESSAGE,
    REASON,
    DeadLetterReason,
    read_int,
)
from consumers.decoding import decode_event
from consumers.delivery import Inbound
from consumers.event import Event
from consumers.moves import CopyRefusedError, MoveFailedError, copy_of, fit_to_frame
from consumers.ordering import HeldDelivery
from consumers.retry import delay_label
from consumers.status import DeliveryState, DeliveryUpdate
from consumers.subscription import Subscription
from consumers.testing.results import DeadLetter, SubscriptionRun
from producers.frames import WireMessage
from producers.topology import Topology

__all__ = ["InMemoryBroker", "MemoryLedger", "QueuedDelivery", "VirtualClock"]


class VirtualClock:
    """Seconds since the harness started, moved on by the waits it stands in for, never by
    itself: a `10m` tier, an ordered event's `10m` retry wait, the pauses between in-process
    attempts take no real time. Waits side by side end at the latest of their ends."""

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def advance_to(self, moment: float) -> None:
        self._now = max(self._now, moment)

    async def sleep(self, seconds: float) -> None:
        """The pause between in-process attempts: a turn of the loop, then `seconds` later."""
        until = self._now + seconds
        await asyncio.sleep(0)
        self.advance_to(until)

    async def wait(self, held: HeldDelivery, delay: float, stop: asyncio.Event) -> bool:
        """An ordered delivery's retry wait (consumers.ordering.RetryClock): the handler slot
        lent to other keys for a turn of the loop, the clock moved past `delay`."""
        if stop.is_set():
            return False
        until = self._now + delay
        async with held.slot.lent():
            await asyncio.sleep(0)
        self.advance_to(until)
        return True


@dataclass(slots=True)
class _Stored:
    """A message sitting in a queue."""

    message: WireMessage
    exchange: str
    routing_key: str
    run: SubscriptionRun
    redelivered: bool = False


class _Channel:
    """What the runtime's acking reads of a delivery's channel (an aiormq channel for real)."""

    is_closed = False

    def __init__(self, queue: SubscriptionQueue) -> None:
        self._queue = queue

    @property
    def closing(self) -> asyncio.Future[None]:
        # An independent observer of a closing that never comes, as aiormq hands out.
        return asyncio.get_running_loop().create_future()

    async def basic_ack(
        self,
        delivery_tag: int,
        *,
        multiple: bool = False,
        wait: bool = True,  # noqa: ARG002 - aiormq's signature; settled at once here
    ) -> None:
        self._queue.acked(delivery_tag, multiple=multiple)


class QueuedDelivery:
    """One delivery from an in-memory queue; reads like the real `Inbound`."""

    def __init__(self, stored: _Stored, tag: int, queue: SubscriptionQueue) -> None:
        self.stored = stored
        self.run = stored.run
        wire = stored.message
        self.body: bytes = wire.body
        self.headers: Mapping[str, Any] = dict(wire.headers or {})
        self.content_type = wire.content_type
        self.content_encoding = wire.content_encoding
        self.message_id = wire.message_id or None
        self.correlation_id = wire.correlation_id or None
        self.reply_to = wire.reply_to or None
        self.priority: int | None = wire.priority or 0
        self.timestamp = (
            None if wire.timestamp is None else datetime.fromtimestamp(wire.timestamp, UTC)
        )
        self.type = wire.type or None
        self.app_id = wire.app_id or None
        self.delivery_tag: int | None = tag
        self.redelivered: bool | None = stored.redelivered
        self.exchange: str | None = stored.exchange
        self.routing_key: str | None = stored.routing_key
        self._queue = queue

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        # The runtime uses only what _Channel has: basic_ack, is_closed, closing.
        return cast("aiormq.abc.AbstractChannel", self._queue.channel)

    async def nack(self, *, requeue: bool = True) -> None:
        self._queue.given_back(self, requeue=requeue)

    async def reject(self, *, requeue: bool = False) -> None:
        self._queue.given_back(self, requeue=requeue)


class SubscriptionQueue:
    """A subscription's queue (all partitions of an ordered one in one: order per key holds)."""

    def __init__(self, broker: InMemoryBroker, subscription: Subscription, name: str) -> None:
        self.subscription = subscription
        self.name = name
        self.channel = _Channel(self)
        self._broker = broker
        self._ready: deque[_Stored] = deque()
        self._unacked: dict[int, QueuedDelivery] = {}
        self._tags = itertools.count(1)

    def put(self, stored: _Stored, *, front: bool = False) -> None:
        stored.run.live += 1
        (self._ready.appendleft if front else self._ready.append)(stored)
        self._broker.kick()

    def take(self) -> list[QueuedDelivery]:
        """The deliveries the consumer gets now: as many as its prefetch leaves room for."""
        taken = []
        while self._ready and len(self._unacked) < self.subscription.prefetch:
            delivery = QueuedDelivery(self._ready.popleft(), next(self._tags), self)
            self._unacked[delivery.delivery_tag or 0] = delivery
            taken.append(delivery)
        return taken

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def acked(self, tag: int, *, multiple: bool) -> None:
        tags = [t for t in self._unacked if t <= tag] if multiple else [tag]
        for settled in tags:
            delivery = self._unacked.pop(settled, None)
            if delivery is not None:
                delivery.run.live -= 1
        self._broker.kick()

    def given_back(self, delivery: QueuedDelivery, *, requeue: bool) -> None:
        self._unacked.pop(delivery.delivery_tag or 0, None)
        delivery.run.live -= 1
        if requeue:
            delivery.stored.redelivered = True
            self.put(delivery.stored, front=True)
        else:
            # The queue's own dead-lettering: the message as it is, in the DLQ.
            self._broker.dead_lettered(
                self.subscription.name,
                delivery.stored.message,
                delivery.run,
                reason=DeadLetterReason.UNMOVABLE.value,
            )
        self._broker.kick()


class MemoryLedger:
    """The status store: each event's furthest state per subscription, as the store keeps it."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[str, str, str], DeliveryUpdate] = {}

    async def succeeded_before(self, subscription: str, source: str, event_id: str) -> bool:
        kept = self.statuses.get((subscription, source, event_id))
        return kept is not None and kept.state is DeliveryState.SUCCEEDED

    def vouches_first_copy(self, mark: object, source: str, event_id: str) -> bool:  # noqa: ARG002 - the protocol's
        # Nothing here is marked by an ingress: every delivery asks, the runtime's safe path.
        return False

    def note(self, update: DeliveryUpdate) -> None:
        key = (update.subscription, update.source, update.event_id)
        kept = self.statuses.get(key)
        if kept is None or _rank(update) >= _rank(kept):
            self.statuses[key] = update

    async def record(self, update: DeliveryUpdate) -> None:
        self.note(update)

    async def record_many(self, updates: Sequence[DeliveryUpdate]) -> None:
        for update in updates:
            self.note(update)


def _rank(update: DeliveryUpdate) -> tuple[int, int, int]:
    return (update.replays, update.attempts, update.state.rank)


class InMemoryBroker:
    """The queues of a set of subscriptions, and the mover (`consumers.moves.Mover`) that copies
    deliveries between them."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        *,
        topology: Topology,
        clock: VirtualClock,
        kick: Callable[[], None],
    ) -> None:
        self.topology = topology
        self.clock = clock
        self.kick = kick
        self.queues = {
            s.name: SubscriptionQueue(self, s, topology.queue(s.name)) for s in subscriptions
        }
        # Retry tier queue -> (its subscription's queue, its delay), as declared for real.
        self._tiers = {
            topology.retry_queue(s.name, delay_label(delay)): (s.name, delay)
            for s in subscriptions
            for delay in s.tier_delays
        }
        self._waiting: list[tuple[float, int, str, _Stored]] = []  # in tiers, by due time
        self._order = itertools.count()
        # Runs not settled yet, by (subscription, source, id): where a completion event belongs.
        self.open_runs: dict[tuple[str, str, str], deque[SubscriptionRun]] = {}
        self.dead_letters: list[DeadLetter] = []
        self.completions: list[Event] = []

    def publish(
        self, message: WireMessage, routing_key: str, runs: Mapping[str, SubscriptionRun]
    ) -> None:
        """The events exchange routed `message` to the queues of `runs`' subscriptions."""
        for name, run in runs.items():
            stored = _Stored(message, self.topology.events_exchange, routing_key, run)
            self.queues[name].put(stored)

    def release_next_tier(self) -> bool:
        """The virtual clock moved to the next copy due out of a retry tier, and every copy due
        by then put back in its queue; False when no copy waits in a tier."""
        if not self._waiting:
            return False
        self.clock.advance_to(self._waiting[0][0])
        while self._waiting and self._waiting[0][0] <= self.clock.now():
            _, _, name, stored = heapq.heappop(self._waiting)
            stored.run.live -= 1  # counted again as it enters its queue
            self.queues[name].put(stored)
        return True

    async def copy(
        self,
        message: Inbound,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        # Encoded and fitted into one frame as the real mover does: a copy that cannot be made
        # raises UncopyableMessageError here too.
        copy = fit_to_frame(copy_of(message, headers), 0)
        run = cast("QueuedDelivery", message).run
        if exchange == self.topology.dead_letter_exchange and routing_key in self.queues:
            reason = str(copy.headers.get(REASON, "")) if copy.headers else ""
            self.dead_lettered(routing_key, copy, run, reason=reason)
            return
        tier = self._tiers.get(routing_key) if exchange == "" else None
        if tier is None:
            raise CopyRefusedError(f"no queue for {routing_key!r} on {exchange!r}")
        name, delay = tier
        # The tier's TTL runs out, and its dead-lettering sends the copy back through the
        # default exchange with the subscription's queue as routing key.
        stored = _Stored(copy, "", self.queues[name].name, run, redelivered=False)
        run.live += 1
        heapq.heappush(self._waiting, (self.clock.now() + delay, next(self._order), name, stored))

    def dead_lettered(
        self, subscription: str, message: WireMessage, run: SubscriptionRun, *, reason: str
    ) -> None:
        headers = dict(message.headers or {})
        error_class, error_message = headers.get(ERROR_CLASS), headers.get(ERROR_MESSAGE)
        letter = DeadLetter(
            subscription=subscription,
            reason=reason,
            error_class=None if error_class is None else str(error_class),
            error_message=None if error_message is None else str(error_message),
            attempts=read_int(headers, ATTEMPTS),
            headers=headers,
            body=message.body,
        )
        run.dead_letter = letter
        self.dead_letters.append(letter)

    async def announce_many(
        self, messages: Sequence[tuple[WireMessage, str]], *, exchange: str
    ) -> list[MoveFailedError | None]:
        if exchange != self.topology.results_exchange:
            return [MoveFailedError(f"no exchange {exchange!r}")] * len(messages)
        for message, _ in messages:
            completion = decode_event(
                message.headers,
                message.content_type,
                message.body,
                correlation_id=message.correlation_id,
            )
            self.completions.append(completion)
            data = completion.data if isinstance(completion.data, dict) else {}
            event = data.get("event", {})
            key = (str(data.get("subscription")), str(event.get("source")), str(event.get("id")))
            runs = self.open_runs.get(key)
            if runs:
                runs[0].completions.append(completion)
        return [None] * len(messages)
