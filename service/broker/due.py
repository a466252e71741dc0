"""The end of the delay chain: routing each event when it comes due.

The chain (producers.delay) ends in `{ns}.due`, which every ingress (or `all`) process
consumes. For each message, in this order, and only then acked:

1. claim it in the store (`DueBook.release`): a cancelled event is acked here, unrouted, and
   no handler ever sees it; a cancel arriving after this claim is told `409`;
2. publish it to `{ns}.events`, persistent and `mandatory`, and wait for RabbitMQ's confirm,
   as the ingress does: it reaches the subscriptions bound now, or `{ns}.unrouted`. An event a
   consumer deferred (it came over AMQP with `deliverat`) goes back to that consumer's queue
   only, through the default exchange, so other subscriptions do not get it twice;
3. record where it was routed (its status leaves `scheduled`), then ack.

Why a consumer of ours rather than letting the last level dead-letter straight into
`{ns}.events`: dead-lettering cannot look at the store, so a cancelled event would reach the
handlers, and the routing would not be recorded. The price is one more hop, a publish with
confirm (milliseconds). Nothing is lost on the way: until the ack the message stays in
`{ns}.due`, so a crash, a lost connection or a refused publish returns it there, and it is
routed again (at least once; the consumers' deduplication covers the repeat). A store that
cannot answer leaves the message unacked a moment and returns it, as a failed publish does.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from producers import InvalidEventError, OutgoingEvent
from producers.delay import DELIVER_KEY_HEADER, DELIVER_TO_HEADER
from producers.formats import parse_time
from producers.frames import WireMessage
from producers.publisher import AmqpPublisher, Destination, PublishRejectedError
from producers.topology import Topology
from producers.wire import CE_HEADER_PREFIX
from service.cancellation import stop_if_cancelled
from service.clock import SYSTEM_CLOCK, Clock
from service.observability.metrics import Metrics

__all__ = ["DueBook", "DueConsumer", "Release"]

_log = structlog.get_logger(component="delay")
DUE_PREFETCH = 64
# A message that could not be routed (broker or store trouble) waits this long before it goes
# back to the queue, so a persistent failure does not spin.
_RETRY_PAUSE_SECONDS = 1.0
# RabbitMQ's own bookkeeping of the hops through the chain: not part of the event.
_DROPPED_HEADERS = frozenset(
    (
        "x-death",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        DELIVER_TO_HEADER,
        DELIVER_KEY_HEADER,
    )
)


class Release(enum.StrEnum):
    PUBLISH = "publish"  # route it now
    CANCELLED = "cancelled"  # ack it unrouted: it was cancelled before it came due


class DueBook(Protocol):
    """What the due consumer asks the store (service.http.delay_book implements it)."""

    async def release(self, event: OutgoingEvent, due_at: float | None) -> Release:
        """Claim the event for routing, unless it was cancelled; raise if the store fails."""
        ...

    async def record_released(self, event: OutgoingEvent) -> None:
        """Record where the released event was routed."""
        ...


class DueConsumer:
    def __init__(
        self,
        *,
        topology: Topology,
        publisher: AmqpPublisher,
        book: DueBook,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._topology = topology
        self._publisher = publisher
        self._book = book
        self._metrics = metrics
        self._clock = clock

    async def start(self, queue: AbstractQueue) -> None:
        await queue.channel.set_qos(prefetch_count=DUE_PREFETCH)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._route(message)
        except Exception as error:  # noqa: BLE001 - whatever failed, the message goes back
            stop_if_cancelled(error)
            _log.warning(
                "a due event could not be routed yet; it goes back to its queue",
                event_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
            await asyncio.sleep(_RETRY_PAUSE_SECONDS)
            with contextlib.suppress(Exception):  # a closed channel returns it anyway
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):
            await message.ack()

    async def _route(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        event = _event_of(message, headers)
        due_at = _due_at(event)
        target = _target(headers)
        if target is None and await self._book.release(event, due_at) is Release.CANCELLED:
            _log.info("cancelled event came due; acked without routing", event_id=event.id)
            self._metrics.delayed_events.labels("cancelled").inc()
            return
        wire = WireMessage(
            message.body,
            message_id=message.message_id,
            headers={
                name: value for name, value in headers.items() if name not in _DROPPED_HEADERS
            },
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            app_id=message.app_id,
        )
        if target is None:
            # No type to route by (not published by conveyor): kept in {ns}.unrouted.
            exchange = self._topology.events_exchange if event.type else self._topology.unrouted
            await self._publisher.publish_message(wire, event.id, Destination(exchange, event.type))
        else:
            await self._back_to(target, wire, event)
        if due_at is not None:
            self._metrics.delayed_lateness_seconds.observe(max(0.0, self._clock.now() - due_at))
        self._metrics.delayed_events.labels("released").inc()
        if target is None:
            try:
                await self._book.record_released(event)
            except Exception as error:  # noqa: BLE001 - routed and confirmed: say so anyway
                stop_if_cancelled(error)
                _log.warning("could not record a released event's status", error=str(error))

    async def _back_to(self, to: Destination, wire: WireMessage, event: OutgoingEvent) -> None:
        try:
            await self._publisher.publish_message(wire, event.id, to)
        except PublishRejectedError as error:
            if error.outcome != "returned":
                raise
            # The subscription's queue is gone: kept in {ns}.unrouted, never dropped.
            unrouted = Destination(self._topology.unrouted, event.type)
            await self._publisher.publish_message(wire, event.id, unrouted)


def _target(headers: dict[str, Any]) -> Destination | None:
    exchange = _text(headers.get(DELIVER_TO_HEADER))
    if exchange is None:
        return None
    return Destination(exchange, _text(headers.get(DELIVER_KEY_HEADER)) or "")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _event_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> OutgoingEvent:
    """The event's attributes as the ingress published them (binary mode)."""
    attributes = {
        name[len(CE_HEADER_PREFIX) :]: text
        for name, value in headers.items()
        if name.startswith(CE_HEADER_PREFIX) and (text := _text(value)) is not None
    }
    attributes.setdefault("id", message.message_id or "")
    attributes.setdefault("source", "")
    attributes.setdefault("type", "")
    return OutgoingEvent(attributes, message.content_type, message.body)


def _due_at(event: OutgoingEvent) -> float | None:
    text = event.attributes.get("deliverat")
    if text is None:
        return None
    try:
        return parse_time(text).timestamp()
    except InvalidEventError:
        return None
