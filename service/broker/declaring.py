"""Declaring conveyor's topology on a new connection: the exchanges, and each subscription's queues.

Every role declares all of it: consumers bind to the events exchange, and events an ingress
accepts before any worker runs wait in their subscription's queue instead of counting as
unrouted.
"""

from __future__ import annotations

import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from consumers.ordering import explain_missing_exchange_type
from consumers.subscription import Subscription
from consumers.topology import declare_subscription_queues
from producers.publisher import AmqpPublisher
from producers.topology import Topology, declare_events_exchange, declare_results_exchange

__all__ = ["attach_publisher", "declare_exchanges", "declare_subscription"]

_log = structlog.get_logger(component="broker")


async def declare_exchanges(
    connection: AbstractRobustConnection, topology: Topology
) -> AbstractExchange:
    """The events and results exchanges, on a channel that stays open, so that a reconnect to a
    wiped broker re-declares the exchanges before the queues."""
    setup = await connection.channel()
    exchange = await declare_events_exchange(setup, topology)
    await declare_results_exchange(setup, topology)
    return exchange


async def attach_publisher(
    connection: AbstractRobustConnection, publisher: AmqpPublisher, exchange: AbstractExchange
) -> None:
    """The publisher's own confirm channel, on the events exchange."""
    publishing = await connection.channel(publisher_confirms=True)
    publisher.attach(
        connection, publishing, await publishing.get_exchange(exchange.name, ensure=False)
    )


async def declare_subscription(
    connection: AbstractRobustConnection, topology: Topology, subscription: Subscription
) -> tuple[AbstractRobustChannel, tuple[AbstractQueue, ...]]:
    """A channel of the subscription's own, and its queues declared on it."""
    channel = await connection.channel()
    try:
        return channel, await declare_subscription_queues(channel, topology, subscription)
    except aiormq.exceptions.AMQPError as error:
        explained = explain_missing_exchange_type(error)
        if explained is None:
            raise
        # Loud, and retried: the plugin can be enabled while conveyor waits.
        _log.error(str(explained), subscription=subscription.name)
        raise explained from error
