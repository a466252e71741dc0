"""Building a connection's consumers, and draining them when the connection is given up.

One confirm channel per connection moves failed deliveries into retry tiers and dead-letter
queues (the `MessageMover`); each subscription gets a `SubscriptionConsumer` on its own channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from consumers.moves import MessageMover
from consumers.observe import HandlerTracer
from consumers.pacing import TokenBucket
from consumers.runtime import SubscriptionConsumer
from consumers.status import StatusLedger
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps
from producers.delay import DelayChain, levels_for
from producers.topology import Topology
from service.observability.metrics import Metrics
from service.settings import Settings

__all__ = ["ConsumerFactory"]

_log = structlog.get_logger(component="broker")


class ConsumerFactory:
    """Starts consumers on a connection, and keeps the drains of retired ones until closed."""

    def __init__(
        self,
        settings: Settings,
        *,
        topology: Topology,
        metrics: Metrics,
        tracer: HandlerTracer,
        steps: HandlerSteps,
    ) -> None:
        self._settings = settings
        self._topology = topology
        self._metrics = metrics
        self._tracer = tracer
        self._steps = steps
        levels = levels_for(settings.max_delay)
        # Events over AMQP with a deliverat ahead wait in the chain (consumers.deferral).
        self._chain = DelayChain(topology, levels) if levels else None
        self._retired: set[asyncio.Task[None]] = set()
        # Rate limits by subscription, kept across reconnects and failovers: a new connection's
        # consumers do not start with a full bucket.
        self._buckets: dict[str, TokenBucket] = {}

    async def mover(self, connection: AbstractRobustConnection) -> MessageMover:
        return MessageMover(
            await connection.channel(publisher_confirms=True),
            timeout=self._settings.publish_timeout,
        )

    async def start(
        self,
        subscription: Subscription,
        *,
        channel: AbstractRobustChannel,
        queues: tuple[AbstractQueue, ...],
        mover: MessageMover,
        ledger: StatusLedger,
    ) -> SubscriptionConsumer:
        consumer = SubscriptionConsumer(
            subscription,
            topology=self._topology,
            channel=channel,
            queues=queues,
            mover=mover,
            ledger=ledger,
            observer=self._metrics,
            tracer=self._tracer,
            steps=self._steps,
            bucket=self._bucket(subscription),
            chain=self._chain,
        )
        await consumer.start()
        _log.info(
            "consuming",
            subscription=subscription.name,
            queues=[queue.name for queue in queues],
            prefetch=subscription.prefetch,
            concurrency=subscription.concurrency,
            rate=None if subscription.rate is None else subscription.rate.text,
            filters=len(subscription.filters),
        )
        return consumer

    def _bucket(self, subscription: Subscription) -> TokenBucket | None:
        if subscription.rate is None:
            return None
        bucket = self._buckets.get(subscription.name)
        if bucket is None:
            bucket = self._buckets[subscription.name] = TokenBucket(subscription.rate)
        return bucket

    def retire(self, consumers: Sequence[SubscriptionConsumer]) -> None:
        """Consumers whose channels died with their connection: whatever they hold goes back to
        the queue (an ack on a closed channel raises, and never reaches the new one). Running
        handlers may finish meanwhile; nothing new starts."""
        for consumer in consumers:
            draining = asyncio.create_task(consumer.drain(self._settings.shutdown_timeout))
            self._retired.add(draining)
            draining.add_done_callback(self._retired.discard)

    async def drain(self, consumers: Sequence[SubscriptionConsumer]) -> None:
        """Drain `consumers` (handlers get the shutdown timeout) and wait for the retired ones."""
        drains = await asyncio.gather(
            *(consumer.drain(self._settings.shutdown_timeout) for consumer in consumers),
            *self._retired,
            return_exceptions=True,
        )
        for failed in (result for result in drains if isinstance(result, Exception)):
            _log.warning("a consumer did not drain cleanly", error=repr(failed))
