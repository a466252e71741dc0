"""The per-subscription topology: its quorum queue, retry tiers and dead-letter queue.

An ordered subscription has, instead of the queue and the tiers, a consistent-hash exchange
bound to `{ns}.events` with the subscription's patterns, spreading keys over N partition queues
(quorum, single-active-consumer) that dead-letter like the subscription queue would.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from consumers.ordering import CONSISTENT_HASH, PARTITION_WEIGHT, Ordering
from consumers.retry import delay_label
from consumers.subscription import Subscription
from producers.topology import QUORUM, Topology

__all__ = ["DELIVERY_LIMIT", "declare_subscription_queues", "subscription_queue_names"]

# Backstop against a message that kills its worker again and again: after this many deliveries
# the quorum queue dead-letters it (reason `delivery_limit` in x-death) instead of looping.
DELIVERY_LIMIT = 20

# at-least-once dead-lettering holds a message until the target queue confirmed it; RabbitMQ
# requires reject-publish overflow for it, else it silently falls back to at-most-once.
_SAFE_DEAD_LETTERING: FieldTable = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def subscription_queue_arguments(topology: Topology, name: str) -> FieldTable:
    return {
        **_SAFE_DEAD_LETTERING,
        "x-dead-letter-exchange": topology.dead_letter_exchange,
        "x-dead-letter-routing-key": name,
        "x-delivery-limit": DELIVERY_LIMIT,
    }


def retry_queue_arguments(topology: Topology, name: str, delay: float) -> FieldTable:
    # Expired messages go straight back to the subscription's queue through the default
    # exchange, not through {ns}.events, so other subscriptions do not see them again.
    return {
        **_SAFE_DEAD_LETTERING,
        "x-message-ttl": round(delay * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": topology.queue(name),
    }


def partition_queue_arguments(topology: Topology, name: str) -> FieldTable:
    # Single active consumer: one consumer at a time takes a partition, in order; another
    # process's consumer waits and takes over (the unacked tail first) when that one goes.
    return {**subscription_queue_arguments(topology, name), "x-single-active-consumer": True}


def subscription_queue_names(topology: Topology, subscription: Subscription) -> tuple[str, ...]:
    """The queues the subscription's events wait in: `{ns}.{name}`, or each partition."""
    if subscription.ordering is None:
        return (topology.queue(subscription.name),)
    return tuple(
        topology.partition_queue(subscription.name, index)
        for index in range(subscription.ordering.partitions)
    )


async def declare_subscription_queues(
    channel: AbstractChannel, topology: Topology, subscription: Subscription
) -> tuple[AbstractQueue, ...]:
    """Declare `{ns}.{name}`, its retry tiers and `{ns}.{name}.dlq` behind `{ns}.dlx`; or, for
    an ordered subscription, its partition exchange and queues. The queues to consume.

    Idempotent: each start declares the same entities with the same arguments.
    """
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        topology.dead_letter_queue(subscription.name), durable=True, arguments=QUORUM
    )
    await dead_letter_queue.bind(dead_letters, routing_key=subscription.name)
    if subscription.ordering is not None:
        return await _declare_partitions(channel, topology, subscription, subscription.ordering)
    queue = await channel.declare_queue(
        topology.queue(subscription.name),
        durable=True,
        arguments=subscription_queue_arguments(topology, subscription.name),
    )
    for delay in subscription.retry.delays:
        await channel.declare_queue(
            topology.retry_queue(subscription.name, delay_label(delay)),
            durable=True,
            arguments=retry_queue_arguments(topology, subscription.name, delay),
        )
    for pattern in subscription.events:
        await queue.bind(topology.events_exchange, routing_key=pattern)
    return (queue,)


async def _declare_partitions(
    channel: AbstractChannel, topology: Topology, subscription: Subscription, ordering: Ordering
) -> tuple[AbstractQueue, ...]:
    # conveyor publishes with routing key = event type, so the key travels in a header; the
    # topic patterns select the events on the way in (an exchange-to-exchange binding).
    # A message without the header hashes like one more key: all such events share a partition.
    partitions = await channel.declare_exchange(
        topology.partition_exchange(subscription.name),
        CONSISTENT_HASH,
        durable=True,
        arguments={"hash-header": ordering.header},
    )
    for pattern in subscription.events:
        await partitions.bind(topology.events_exchange, routing_key=pattern)
    queues = []
    for name in subscription_queue_names(topology, subscription):
        queue = await channel.declare_queue(
            name, durable=True, arguments=partition_queue_arguments(topology, subscription.name)
        )
        await queue.bind(partitions, routing_key=PARTITION_WEIGHT)
        queues.append(queue)
    return tuple(queues)
