"""Publishing with publisher confirms: an event counts as published only once RabbitMQ acked it."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

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
    "PublishError",
    "PublishRejectedError",
    "PublishTimeoutError",
    "Publisher",
]


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
    ) -> None:
        """Return once the broker confirmed the event; raise PublishError otherwise."""
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
    ) -> None:
        message = to_wire_message(event, correlation_id=correlation_id, traceparent=traceparent)
        started = time.perf_counter()
        self._observer.publish_started()
        outcome = "unavailable"
        try:
            await self._publish(message, event)
            outcome = "ack"
        except PublishTimeoutError:
            outcome = "timeout"
            raise
        except PublishRejectedError as error:
            outcome = error.outcome
            raise
        finally:
            self._observer.publish_finished(outcome, time.perf_counter() - started)

    async def _publish(self, message: WireMessage, event: OutgoingEvent) -> None:
        try:
            async with asyncio.timeout(self._timeout), self._same_id.turn(event.id):
                pipeline = await self._state.pipeline()
                confirmation = await pipeline.publish(
                    message, exchange=self._exchange, routing_key=event.type, mandatory=True
                )
        except TimeoutError:
            raise PublishTimeoutError(f"no confirm within {self._timeout:g}s") from None
        except DeliveryError:
            raise PublishRejectedError("RabbitMQ nacked the message", outcome="nack") from None
        except BROKER_FAILURES as error:
            raise BrokerUnavailableError(f"connection lost: {type(error).__name__}") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: let it
            # aiormq fails pending confirms with CancelledError when it drops a dead connection
            # (missed heartbeats); that is an unavailable broker, not a cancelled request.
            raise BrokerUnavailableError("connection dropped while awaiting the confirm") from None
        if not isinstance(confirmation, Basic.Ack):
            # A basic.return: not even the alternate exchange could route it.
            raise PublishRejectedError(
                "RabbitMQ returned the message as unroutable", outcome="returned"
            )
