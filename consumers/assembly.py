"""One subscription's delivery path put together: reporter, delivery order, settler, pipeline.

The consumer runtime (consumers.runtime) and the in-memory harness (consumers.testing) both
assemble a subscription here, so that what decides an event's fate is the same in both; they
differ only in what they hand in (RabbitMQ's mover and the store's ledger, or stand-ins).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from consumers.deferral import DeferUntilDue
from consumers.delivery_order import DeliveryOrder, delivery_order
from consumers.event import Handler
from consumers.moves import Mover
from consumers.observe import DeliveryObserver, HandlerTracer
from consumers.ordering import LOOP_RETRY_CLOCK, RetryClock
from consumers.pacing import TokenBucket
from consumers.pipeline import DeliveryPipeline
from consumers.reporting import StatusReporter
from consumers.settling import Settler
from consumers.status import StatusLedger
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps, WatchedHandler
from producers.topology import Topology

__all__ = ["DeliveryPath", "assemble"]


@dataclass(frozen=True, slots=True)
class DeliveryPath:
    order: DeliveryOrder
    settler: Settler
    pipeline: DeliveryPipeline


def assemble(
    subscription: Subscription,
    *,
    handler: Handler,
    queues: Collection[str],
    consumer_tags: Sequence[str],
    topology: Topology,
    mover: Mover,
    ledger: StatusLedger,
    observer: DeliveryObserver,
    tracer: HandlerTracer,
    steps: HandlerSteps,
    stopping: asyncio.Event,
    retry_clock: RetryClock = LOOP_RETRY_CLOCK,
    bucket: TokenBucket | None = None,
    deferral: DeferUntilDue | None = None,
) -> DeliveryPath:
    """The path of `subscription`'s deliveries through `handler` (the subscription's own, or
    one that wraps it)."""
    reporter = StatusReporter(subscription, ledger=ledger, mover=mover, topology=topology)
    order = delivery_order(
        subscription,
        # The handler as it runs: its steps timed (for the loop-lag warning), its returns checked.
        handler=WatchedHandler(subscription.name, subscription.handler_path, handler, steps),
        consumer_tags=consumer_tags,
        reporter=reporter,
        stopping=stopping,
        retry_clock=retry_clock,
    )
    settler = Settler(
        subscription, topology=topology, mover=mover, reporter=reporter, release=order
    )
    pipeline = DeliveryPipeline(
        subscription,
        queues=queues,
        order=order,
        settler=settler,
        reporter=reporter,
        observer=observer,
        tracer=tracer,
        stopping=stopping,
        bucket=bucket,
        deferral=deferral,
        # An ordered subscription's partition exchange: an archive replay reaches it there.
        own_exchange=None
        if subscription.ordering is None
        else topology.partition_exchange(subscription.name),
    )
    return DeliveryPath(order, settler, pipeline)
