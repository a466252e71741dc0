"""The per-subscription topology: its quorum queue, retry tiers and dead-letter queue."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from consumers.retry import delay_label
from consumers.subscription import Subscription
from producers import Topology
from producers.topology import QUORUM

__all__ = ["DELIVERY_LIMIT", "declare_subscription_queue"]

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


async def declare_subscription_queue(
    channel: AbstractChannel, topology: Topology, subscription: Subscription
) -> AbstractQueue:
    """Declare `{ns}.{name}`, its retry tiers and `{ns}.{name}.dlq` behind `{ns}.dlx`.

    Idempotent: each start declares the same entities with the same arguments.
    """
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        topology.dead_letter_queue(subscription.name), durable=True, arguments=QUORUM
    )
    await dead_letter_queue.bind(dead_letters, routing_key=subscription.name)
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
    return queue
