"""Names of the exchanges and queues of one namespace, and the shared part of the topology.

This is the contract other services rely on (see README, "Topology").
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp.common import FieldTable

__all__ = ["Topology", "declare_events_exchange", "declare_results_exchange"]

QUORUM: FieldTable = {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def unrouted(self) -> str:
        """Both the alternate exchange of the events exchange and the queue behind it."""
        return f"{self.namespace}.unrouted"

    @property
    def results_exchange(self) -> str:
        """Topic exchange of completion events (`conveyor.event.succeeded.<subscription>`...)."""
        return f"{self.namespace}.results"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def archive(self) -> str:
        """The stream every event published to the events exchange is kept in, when on."""
        return f"{self.namespace}.archive"

    def queue(self, subscription: str) -> str:
        return f"{self.namespace}.{subscription}"

    def dead_letter_queue(self, subscription: str) -> str:
        return f"{self.namespace}.{subscription}.dlq"

    def retry_queue(self, subscription: str, delay_label: str) -> str:
        return f"{self.namespace}.{subscription}.retry.{delay_label}"

    def partition_exchange(self, subscription: str) -> str:
        """An ordered subscription's consistent-hash exchange, in front of its partitions."""
        return f"{self.namespace}.{subscription}.partitions"

    def partition_queue(self, subscription: str, index: int) -> str:
        return f"{self.namespace}.{subscription}.p{index}"


async def declare_events_exchange(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare `{ns}.events` with its alternate exchange, so an event no one binds is kept."""
    unrouted_exchange = await channel.declare_exchange(
        topology.unrouted, aio_pika.ExchangeType.FANOUT, durable=True
    )
    unrouted_queue = await channel.declare_queue(topology.unrouted, durable=True, arguments=QUORUM)
    await unrouted_queue.bind(unrouted_exchange)
    return await channel.declare_exchange(
        topology.events_exchange,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.unrouted},
    )


async def declare_results_exchange(
    channel: AbstractChannel, topology: Topology
) -> AbstractExchange:
    """Declare `{ns}.results`; who wants completion events binds a queue of their own to it."""
    return await channel.declare_exchange(
        topology.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
