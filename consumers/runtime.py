"""The consumer runtime: deliveries of one subscription handed to its handler, bounded in parallel.

One place maps a delivery's outcome to ack / requeue / dead-letter (`_settle`). Nothing is
acked before its handler returned; whatever is unsettled when the channel closes goes back to
the queue, so a crash or shutdown yields a redelivery, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from typing import cast

import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from consumers.decoding import MalformedEventError, decode_event
from consumers.subscription import Subscription

__all__ = ["Outcome", "SubscriptionConsumer"]

_log = structlog.get_logger(component="consumer")
_SETTLE_FAILURES = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError)


class Outcome(enum.StrEnum):
    """What happened to one delivery."""

    ACKED = "acked"  # the handler returned
    REQUEUED = "requeued"  # first failure: one more try from the queue
    DEAD_LETTERED = "dead-lettered"  # failed again, or malformed: to {ns}.{subscription}.dlq
    RETURNED = "returned"  # not started before shutdown: back to the queue untouched


class SubscriptionConsumer:
    """Consumes `{ns}.{subscription}` on its own channel with the subscription's prefetch."""

    def __init__(
        self, subscription: Subscription, channel: AbstractChannel, queue: AbstractQueue
    ) -> None:
        self.subscription = subscription
        self._channel = channel
        self._queue = queue
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._draining = False
        self._running: set[asyncio.Task[object]] = set()
        self._consumer_tag = f"conveyor.{subscription.name}.{uuid.uuid4().hex[:12]}"
        self._consuming = False

    async def start(self) -> None:
        await self._channel.set_qos(prefetch_count=self.subscription.prefetch)
        await self._queue.consume(self._on_message, consumer_tag=self._consumer_tag)
        self._consuming = True

    async def attached(self) -> bool:
        """True when the broker-side consumer exists on a live channel (for /readyz)."""
        if not self._consuming or self._draining or self._channel.is_closed:
            return False
        try:
            async with asyncio.timeout(0.5):
                underlay = cast("aiormq.Channel", await self._channel.get_underlay_channel())
        except (TimeoutError, *_SETTLE_FAILURES):
            return False
        return self._consumer_tag in underlay.consumers

    async def drain(self, timeout: float) -> None:
        """Stop taking deliveries, give running handlers `timeout` seconds, then cancel them.

        Deliveries not yet started are requeued; cancelled ones go back when the channel closes.
        """
        self._draining = True
        if self._consuming:
            with contextlib.suppress(TimeoutError, *_SETTLE_FAILURES):
                async with asyncio.timeout(min(timeout, 5.0)):
                    await self._queue.cancel(self._consumer_tag)
            self._consuming = False
        running = set(self._running)
        if not running:
            return
        _, unfinished = await asyncio.wait(running, timeout=timeout)
        for task in unfinished:
            task.cancel()
        if unfinished:
            _log.warning(
                "handlers cancelled at shutdown; their events return to the queue",
                subscription=self.subscription.name,
                cancelled=len(unfinished),
            )
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs each delivery in its own task; the semaphore bounds handlers in parallel
        # while prefetch bounds how many deliveries wait here.
        async with self._slots:
            if self._draining:
                await self._settle(message, Outcome.RETURNED)
                return
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            try:
                await self._deliver(message)
            finally:
                if task is not None:
                    self._running.discard(task)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        with structlog.contextvars.bound_contextvars(
            subscription=self.subscription.name,
            event_id=message.message_id,
            event_type=message.routing_key,
            correlation_id=message.correlation_id,
        ):
            try:
                event = decode_event(
                    headers,
                    message.content_type,
                    message.body,
                    correlation_id=message.correlation_id,
                    redelivered=bool(message.redelivered),
                )
            except MalformedEventError as error:
                _log.error("malformed message", reason="malformed", detail=str(error))
                await self._settle(message, Outcome.DEAD_LETTERED)
                return
            structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
            try:
                await self.subscription.handler(event)
            except Exception as error:  # noqa: BLE001 - any handler failure is settled, never raised
                outcome = Outcome.DEAD_LETTERED if message.redelivered else Outcome.REQUEUED
                _log.warning(
                    "handler failed",
                    outcome=outcome.value,
                    error_class=type(error).__name__,
                    error=str(error)[:500],
                )
                await self._settle(message, outcome)
                return
            await self._settle(message, Outcome.ACKED)
            _log.debug("event handled")

    async def _settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        try:
            match outcome:
                case Outcome.ACKED:
                    await message.ack()
                case Outcome.REQUEUED | Outcome.RETURNED:
                    await message.nack(requeue=True)
                case Outcome.DEAD_LETTERED:
                    # The queue's dead-letter exchange routes it to {ns}.{subscription}.dlq.
                    await message.reject(requeue=False)
        except _SETTLE_FAILURES as error:
            # The channel is gone: the broker requeues the unsettled delivery by itself.
            _log.warning(
                "could not settle delivery; the broker will redeliver it",
                outcome=outcome.value,
                error_class=type(error).__name__,
            )
