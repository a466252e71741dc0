"""A unique namespace on the shared broker per test, and its cleanup: everything declared under
it goes at teardown (the `namespace` fixture in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from consumers.retry import delay_label
from consumers.subscription import Subscription
from producers.delay import MAX_LEVELS, DelayChain
from producers.topology import Topology
from tests.support.waiting import eventually

__all__ = ["Namespace"]


@dataclass
class Namespace:
    """A unique namespace on the shared broker; everything declared under it goes at teardown."""

    name: str
    amqp_url: str
    # subscription name -> its retry delays: every queue it declares, tiers included
    subscriptions: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # ordered subscription name -> its partition count: its partition queues and hash exchange
    partitioned: dict[str, int] = field(default_factory=dict)
    # the most levels of delay chain a conveyor started here declared (CONVEYOR_MAX_DELAY)
    delay_levels: int = 0

    def register(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.name] = subscription.tier_delays
        if subscription.ordering is not None:
            self.partitioned[subscription.name] = subscription.ordering.partitions

    @property
    def topology(self) -> Topology:
        return Topology(self.name)

    async def depth(self, queue: str) -> int:
        async with await aio_pika.connect(self.amqp_url) as connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

    async def take_all(self, queue: str) -> list[AbstractIncomingMessage]:
        """Every message now in `queue`, removed from it (for asserting what sits there)."""
        messages = []
        async with await aio_pika.connect(self.amqp_url) as connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            while (message := await declared.get(fail=False, no_ack=True)) is not None:
                messages.append(message)
        return messages

    async def take_at_least(
        self, queue: str, count: int, timeout: float = 10.0
    ) -> list[AbstractIncomingMessage]:
        """Take messages from `queue` until `count` arrived (dead-lettering is asynchronous)."""
        taken: list[AbstractIncomingMessage] = []

        async def enough() -> bool:
            taken.extend(await self.take_all(queue))
            return len(taken) >= count

        await eventually(enough, timeout=timeout, what=f"{count} messages in {queue}")
        return taken

    async def take_until(
        self, queue: str, sentinel_id: str, timeout: float = 10.0
    ) -> list[AbstractIncomingMessage]:
        """Take messages from `queue` until the one with message id `sentinel_id`, sent after
        everything under test, has arrived: every message taken but the sentinel. What was
        enqueued before the sentinel is all there, so a missing extra did not happen."""
        taken: list[AbstractIncomingMessage] = []

        async def arrived() -> bool:
            taken.extend(await self.take_all(queue))
            return any(message.message_id == sentinel_id for message in taken)

        await eventually(arrived, timeout=timeout, what=f"sentinel {sentinel_id} in {queue}")
        return [message for message in taken if message.message_id != sentinel_id]

    async def sentinel_into(self, queue: str) -> str:
        """Publish a sentinel straight into `queue` (through the default exchange), behind
        everything confirmed before: its message id, for `take_until`."""
        sentinel_id = f"sentinel-{uuid.uuid4().hex}"
        async with await aio_pika.connect(self.amqp_url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"", message_id=sentinel_id), routing_key=queue
            )
        return sentinel_id

    async def publish_raw(self, body: bytes, *, routing_key: str, **properties: Any) -> None:
        async with await aio_pika.connect(self.amqp_url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.topology.events_exchange)
            await exchange.publish(aio_pika.Message(body, **properties), routing_key=routing_key)

    async def cleanup(self) -> None:
        topology = self.topology
        queues = [topology.unrouted, topology.archive]
        for name, delays in self.subscriptions.items():
            queues += [topology.queue(name), topology.dead_letter_queue(name)]
            queues += [topology.retry_queue(name, delay_label(delay)) for delay in delays]
        exchanges = [
            topology.events_exchange,
            topology.unrouted,
            topology.dead_letter_exchange,
            topology.results_exchange,
        ]
        for name, partitions in self.partitioned.items():
            queues += [topology.partition_queue(name, index) for index in range(partitions)]
            exchanges.append(topology.partition_exchange(name))
        async with await aio_pika.connect(self.amqp_url) as connection:
            # A `conveyor serve` started as a process declares the chain its own settings ask
            # for, which this fixture cannot see: its `due` queue tells that one exists.
            levels = self.delay_levels or (
                MAX_LEVELS if await _exists(connection, DelayChain(topology, 0).due) else 0
            )
            if levels:
                chain = DelayChain(topology, levels)
                queues += chain.names()
                exchanges += chain.names()
            for name in queues:
                channel = await connection.channel()
                with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                    await channel.queue_delete(name)
            for name in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                    await channel.exchange_delete(name)


async def _exists(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True
