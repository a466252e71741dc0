"""The per-subscription part of the topology: a quorum queue, its bindings and its dead letters."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from consumers.subscription import Subscription
from producers import Topology
from producers.topology import QUORUM

__all__ = ["DELIVERY_LIMIT", "declare_subscription_queue"]

# Backstop against a message that kills its worker again and again: after this many deliveries
# the quorum queue dead-letters it instead of redelivering forever.
DELIVERY_LIMIT = 20


def subscription_queue_arguments(topology: Topology, name: str) -> FieldTable:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": topology.dead_letter_exchange,
        "x-dead-letter-routing-key": name,
        # at-least-once dead-lettering holds a message until the DLQ confirmed it; RabbitMQ
        # requires reject-publish overflow for it, else it silently falls back to at-most-once.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }


async def declare_subscription_queue(
    channel: AbstractChannel, topology: Topology, subscription: Subscription
) -> AbstractQueue:
    """Declare `{ns}.{name}` bound to the events exchange and `{ns}.{name}.dlq` behind `{ns}.dlx`.

    Idempotent: each start declares the same entities with the same arguments.
    """
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        topology.dead_letter_queue(subscription.name),
        durable=True,
        arguments=QUORUM,
    )
    await dead_letter_queue.bind(dead_letters, routing_key=subscription.name)
    queue = await channel.declare_queue(
        topology.queue(subscription.name),
        durable=True,
        arguments=subscription_queue_arguments(topology, subscription.name),
    )
    for pattern in subscription.events:
        await queue.bind(topology.events_exchange, routing_key=pattern)
    return queue
