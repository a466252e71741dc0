"""The consumer runtime: one subscription's queues consumed, each delivery through its pipeline.

The consumer owns the broker-side consumers and the shutdown; a delivery's way to its ack is
consumers.pipeline's, and whether the subscription is ordered is the `DeliveryOrder`
(consumers.delivery_order) chosen here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import cast

import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from consumers.delivery import Inbound
from consumers.delivery_order import delivery_order
from consumers.moves import MessageMover
from consumers.observe import (
    NO_DELIVERY_OBSERVER,
    NO_HANDLER_TRACER,
    DeliveryObserver,
    HandlerTracer,
)
from consumers.pipeline import DeliveryPipeline
from consumers.reporting import StatusReporter
from consumers.settling import Settler
from consumers.status import StatusLedger
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps, WatchedHandler
from producers.publisher import BROKER_FAILURES
from producers.topology import Topology

__all__ = ["SubscriptionConsumer"]

_log = structlog.get_logger(component="consumer")
_CANCEL_GRACE_SECONDS = 5.0
_UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError)


class SubscriptionConsumer:
    """Consumes `{ns}.{subscription}` on its own channel with the subscription's prefetch."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        topology: Topology,
        channel: AbstractChannel,
        queues: tuple[AbstractQueue, ...],
        mover: MessageMover,
        ledger: StatusLedger,
        observer: DeliveryObserver = NO_DELIVERY_OBSERVER,
        tracer: HandlerTracer = NO_HANDLER_TRACER,
        steps: HandlerSteps | None = None,
    ) -> None:
        self.subscription = subscription
        self._channel = channel
        self._queues = queues
        tag = f"conveyor.{subscription.name}.{uuid.uuid4().hex[:12]}"
        # One consumer per queue (an ordered subscription has one per partition).
        self._consumer_tags = (
            [tag] if len(queues) == 1 else [f"{tag}.p{i}" for i in range(len(queues))]
        )
        self._consuming = False
        self._stopping = asyncio.Event()  # set when a shutdown begins
        reporter = StatusReporter(subscription, ledger=ledger, mover=mover, topology=topology)
        self._order = delivery_order(
            subscription,
            # The handler as it runs: its steps timed (for the loop-lag warning), its returns
            # checked.
            handler=WatchedHandler(
                subscription.name,
                subscription.handler_path,
                subscription.handler,
                steps or HandlerSteps(),
            ),
            consumer_tags=self._consumer_tags,
            reporter=reporter,
            stopping=self._stopping,
        )
        self._settler = Settler(
            subscription, topology=topology, mover=mover, reporter=reporter, release=self._order
        )
        self._pipeline = DeliveryPipeline(
            subscription,
            queues=frozenset(queue.name for queue in queues),
            own_exchange=(
                None
                if subscription.ordering is None
                else topology.partition_exchange(subscription.name)
            ),
            order=self._order,
            settler=self._settler,
            reporter=reporter,
            observer=observer,
            tracer=tracer,
            stopping=self._stopping,
        )

    async def start(self) -> None:
        # Per consumer, so an ordered subscription holds up to `prefetch` per partition.
        await self._channel.set_qos(prefetch_count=self.subscription.prefetch)
        self._order.take_over(await self._channel.get_underlay_channel(), self._on_message)
        for queue, tag in zip(self._queues, self._consumer_tags, strict=True):
            await queue.consume(self._on_message, consumer_tag=tag)
        self._consuming = True

    async def attached(self) -> bool:
        """True when the broker-side consumer exists on a live channel (for /readyz)."""
        if not self._consuming or self._stopping.is_set() or self._channel.is_closed:
            return False
        try:
            async with asyncio.timeout(0.5):
                underlay = cast("aiormq.Channel", await self._channel.get_underlay_channel())
        except _UNREACHABLE:
            return False
        return all(tag in underlay.consumers for tag in self._consumer_tags)

    async def drain(self, timeout: float) -> None:
        """Stop taking deliveries, give running handlers `timeout` seconds, then cancel them.

        Deliveries not yet started are requeued; cancelled ones go back when the channel closes.
        """
        self._stopping.set()
        if self._consuming and self._order.cancel_at_drain:
            with contextlib.suppress(TimeoutError, *BROKER_FAILURES):
                async with asyncio.timeout(min(timeout, 5.0)):
                    for queue, tag in zip(self._queues, self._consumer_tags, strict=True):
                        await queue.cancel(tag)
        self._consuming = False
        running = set(self._pipeline.running)
        if running:
            _, unfinished = await asyncio.wait(running, timeout=timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                _log.warning(
                    "handlers cancelled at shutdown; their events return to the queue",
                    subscription=self.subscription.name,
                    cancelled=len(unfinished),
                )
                # A handler that swallows cancellation must not hold the process: closing the
                # channel returns its delivery anyway.
                await asyncio.wait(unfinished, timeout=_CANCEL_GRACE_SECONDS)
        await self._order.drain()
        # Acks of finished deliveries go out before the channel closes (else: redeliveries).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CANCEL_GRACE_SECONDS):
                await self._settler.acks.flush()

    @property
    def unacked(self) -> int:
        """Deliveries this consumer holds: waiting for a handler slot or being handled."""
        return self._order.holding

    async def _on_message(self, message: Inbound) -> None:
        # Each delivery runs in its own task (consumers.delivery's, or aiormq's and aio-pika's);
        # prefetch bounds how many exist, and the delivery order how many run a handler.
        await self._order.admit(message, self._pipeline.handle)
