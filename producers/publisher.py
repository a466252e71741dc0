"""Publishing with publisher confirms: an event counts as published only once RabbitMQ acked it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from producers.deadlines import settle_by, wait_by
from producers.event import OutgoingEvent
from producers.frames import WireMessage
from producers.observe import NO_PUBLISH_OBSERVER, PublishObserver
from producers.pipeline import ChannelPipeline, ConfirmPipeline
from producers.same_id import SameIdGate
from producers.wire import to_wire_message

__all__ = [
    "BROKER_FAILURES",
    "AmqpPublisher",
    "BrokerUnavailableError",
    "Destination",
    "PublishError",
    "PublishRejectedError",
    "PublishTimeoutError",
    "Publisher",
]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message is published: an exchange and a routing key."""

    exchange: str
    routing_key: str


class PublishError(Exception):
    """The broker did not take responsibility for the event; the caller must not say yes."""

    reason = "publish-failed"


class BrokerUnavailableError(PublishError):
    reason = "broker-unavailable"


class PublishTimeoutError(PublishError):
    reason = "publish-timeout"


class PublishRejectedError(PublishError):
    """RabbitMQ nacked the message or returned it as unroutable."""

    reason = "publish-rejected"

    def __init__(self, detail: str, *, outcome: str) -> None:
        super().__init__(detail)
        self.outcome = outcome  # "nack" or "returned"


class Publisher(Protocol):
    async def publish(
        self,
        event: OutgoingEvent,
        *,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        first_copy_mark: str | None = None,
        destination: Destination | None = None,
    ) -> None:
        """Return once the broker confirmed the event; raise PublishError otherwise."""
        ...

    async def publish_many(
        self,
        events: Sequence[OutgoingEvent],
        *,
        correlation_id: str | None = None,
        traceparents: Sequence[str | None] | None = None,
        first_copy_marks: Sequence[str | None] | None = None,
    ) -> list[PublishError | None]:
        """`publish` for each event: None where the broker confirmed it, else the error."""
        ...


class _Detached:
    """Publisher state before the broker connection exists: every use fails loudly."""

    def usable(self) -> bool:
        return False

    async def pipeline(self) -> ConfirmPipeline:
        raise BrokerUnavailableError("not connected to RabbitMQ")

    def close(self) -> None:
        pass


class _Attached:
    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self._connection = connection
        self._channel = channel
        self._pipeline = ChannelPipeline(channel)

    def usable(self) -> bool:
        return self._connection.connected.is_set() and not self._channel.is_closed

    async def pipeline(self) -> ConfirmPipeline:
        if not self._connection.connected.is_set():
            # Known down: answer at once rather than hold the client for the whole timeout.
            raise BrokerUnavailableError("the connection to RabbitMQ is down")
        # Right after a reconnect the connection is up while aio-pika still restores the
        # channel; wait for it (the caller's publish timeout bounds this).
        while self._channel.is_closed:  # noqa: ASYNC110 - aio-pika offers no event for "restored"
            await asyncio.sleep(_RESTORE_POLL_SECONDS)
        return await self._pipeline.current()

    def close(self) -> None:
        self._pipeline.close()


_RESTORE_POLL_SECONDS = 0.02
# What aiormq and aio-pika raise when the connection or channel goes away under an operation.
BROKER_FAILURES: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


class AmqpPublisher:
    """Publishes to the events exchange on a confirm-mode channel, many publishes in flight.

    The channel belongs to a robust connection, so after a reconnect the same exchange object
    publishes again; a publish caught by the outage fails and is never retried here, because a
    lost confirm does not mean a lost message and the caller decides (the ingress answers 503).
    """

    def __init__(self, *, timeout: float, observer: PublishObserver = NO_PUBLISH_OBSERVER) -> None:
        self._timeout = timeout
        self._observer = observer
        self._state: _Detached | _Attached = _Detached()
        self._exchange = ""
        self._same_id = SameIdGate()

    def attach(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        exchange: AbstractExchange,
    ) -> None:
        """Publish to `exchange` on `channel`, a confirm-mode channel of this publisher's own."""
        self._state.close()
        self._exchange = exchange.name
        self._state = _Attached(connection, channel)

    @property
    def usable(self) -> bool:
        """Whether a publish could go out now (for /readyz)."""
        return self._state.usable()

    def detach(self) -> None:
        self._state.close()
        self._state = _Detached()

    async def publish(
        self,
        event: OutgoingEvent,
        *,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        first_copy_mark: str | None = None,
        destination: Destination | None = None,
    ) -> None:
        """Publish `event` to the events exchange (or to `destination`: the delay chain) as a
        persistent, mandatory message, and return once RabbitMQ confirmed it."""
        message = to_wire_message(
            event,
            correlation_id=correlation_id,
            traceparent=traceparent,
            first_copy_mark=first_copy_mark,
        )
        await self.publish_message(message, event.id, destination or self._to_events(event.type))

    async def publish_message(
        self, message: WireMessage, event_id: str, destination: Destination
    ) -> None:
        """`publish` for a message already on the wire form (one coming out of the delay
        chain, passed on as it is)."""
        started = time.perf_counter()
        self._observer.publish_started()
        outcome = "unavailable"
        try:
            await self._publish(message, event_id, destination)
            outcome = "ack"
        except PublishError as error:
            outcome = _outcome_label(error)
            raise
        finally:
            self._observer.publish_finished(outcome, time.perf_counter() - started)

    async def publish_many(
        self,
        events: Sequence[OutgoingEvent],
        *,
        correlation_id: str | None = None,
        traceparents: Sequence[str | None] | None = None,
        first_copy_marks: Sequence[str | None] | None = None,
    ) -> list[PublishError | None]:
        """`publish` for each event, in one pass: what became of each (None: confirmed).

        The events go out in one write and share one timeout, and each is still confirmed on
        its own. An event whose id is already in flight (or repeated in `events`) takes its
        turn through `publish`, alongside.
        """
        marks = traceparents if traceparents is not None else [None] * len(events)
        firsts = first_copy_marks if first_copy_marks is not None else [None] * len(events)
        outcomes: list[PublishError | None] = [None] * len(events)
        held = [index for index, event in enumerate(events) if self._same_id.try_hold(event.id)]
        in_turn = sorted(set(range(len(events))) - set(held))

        async def take_turn(index: int) -> None:
            try:
                await self.publish(
                    events[index],
                    correlation_id=correlation_id,
                    traceparent=marks[index],
                    first_copy_mark=firsts[index],
                )
            except PublishError as error:
                outcomes[index] = error

        async with asyncio.TaskGroup() as group:
            for index in in_turn:
                group.create_task(take_turn(index))
            try:
                published = await self._publish_held(events, held, correlation_id, marks, firsts)
            finally:
                # Before the turns above end: a repeat within `events` waits for this one.
                for index in held:
                    self._same_id.release(events[index].id)
            for index, outcome in zip(held, published, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _publish_held(
        self,
        events: Sequence[OutgoingEvent],
        indices: Sequence[int],
        correlation_id: str | None,
        traceparents: Sequence[str | None],
        first_copy_marks: Sequence[str | None],
    ) -> list[PublishError | None]:
        if not indices:
            return []
        started = time.perf_counter()
        for _ in indices:
            self._observer.publish_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                pipeline = await self._state.pipeline()
        except PublishError as error:
            outcomes: list[PublishError | None] = [error] * len(indices)
        except TimeoutError:
            outcomes = [PublishTimeoutError(f"no confirm within {self._timeout:g}s")] * len(indices)
        else:
            confirmations = [
                pipeline.publish(
                    to_wire_message(
                        events[index],
                        correlation_id=correlation_id,
                        traceparent=traceparents[index],
                        first_copy_mark=first_copy_marks[index],
                    ),
                    exchange=self._exchange,
                    routing_key=events[index].type,
                    mandatory=True,
                )
                for index in indices
            ]
            await wait_by(confirmations, deadline)
            outcomes = [self._outcome(confirmation) for confirmation in confirmations]
        seconds = time.perf_counter() - started
        for outcome in outcomes:
            self._observer.publish_finished(_outcome_label(outcome), seconds)
        return outcomes

    def _outcome(self, confirmation: asyncio.Future[Any]) -> PublishError | None:
        """What a settled (or still waiting) confirmation means, as `_publish` tells it."""
        if not confirmation.done():
            confirmation.cancel()  # aiormq ignores the late confirm
            return PublishTimeoutError(f"no confirm within {self._timeout:g}s")
        if confirmation.cancelled():
            # Cancelled under us, not by us: read as a lost link, as in `_publish`.
            return BrokerUnavailableError("connection dropped while awaiting the confirm")
        error = confirmation.exception()
        if error is not None:
            failure = _failure_of(error)
            if failure is None:
                raise error
            return failure
        return _unless_acked(confirmation.result())

    def _to_events(self, event_type: str) -> Destination:
        return Destination(self._exchange, event_type)

    async def _publish(self, message: WireMessage, event_id: str, to: Destination) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline) as scope, self._same_id.turn(event_id):
                pipeline = await self._state.pipeline()
                # From here the confirm's own wait keeps the deadline (`settle_by`).
                scope.reschedule(None)
                confirmation = await settle_by(
                    pipeline.publish(
                        message, exchange=to.exchange, routing_key=to.routing_key, mandatory=True
                    ),
                    deadline,
                )
        except TimeoutError:
            raise PublishTimeoutError(f"no confirm within {self._timeout:g}s") from None
        except BROKER_FAILURES as error:  # DeliveryError (a nack) is one of them
            raise _failure_of(error) or error from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: let it
            # A confirmation cancelled under us, not by our caller: the link went away, not the
            # request.
            raise BrokerUnavailableError("connection dropped while awaiting the confirm") from None
        if (failure := _unless_acked(confirmation)) is not None:
            raise failure


def _failure_of(error: BaseException) -> PublishError | None:
    """What a failed confirmation means for the publish (None: not a broker failure)."""
    if isinstance(error, DeliveryError):
        return PublishRejectedError("RabbitMQ nacked the message", outcome="nack")
    if isinstance(error, BROKER_FAILURES):
        return BrokerUnavailableError(f"connection lost: {type(error).__name__}")
    return None


def _unless_acked(confirmation: object) -> PublishError | None:
    """None for a `basic.ack`; a returned message means not even the alternate exchange could
    route it."""
    if isinstance(confirmation, Basic.Ack):
        return None
    return PublishRejectedError("RabbitMQ returned the message as unroutable", outcome="returned")


def _outcome_label(outcome: PublishError | None) -> str:
    """The observer's name for an outcome: ack, nack, returned, timeout or unavailable."""
    if outcome is None:
        return "ack"
    if isinstance(outcome, PublishRejectedError):
        return outcome.outcome
    if isinstance(outcome, PublishTimeoutError):
        return "timeout"
    return "unavailable"
