"""The delay chain: events that are due later wait on the broker, in TTL queues, not in memory.

NServiceBus's RabbitMQ delay infrastructure, adapted: level L is a topic exchange
`{ns}.delay.L` and a quorum queue of the same name whose messages expire after 2**L seconds.
The routing key holds the delay in whole seconds as bits, least significant first
(`b0.b1.b2....`): exchange L sends a message whose bit L is 1 into queue L and one whose bit
is 0 on to exchange L-1 (an exchange-to-exchange binding, no wait). Queue L dead-letters to
exchange L-1, and level 0 ends in `{ns}.due`, the queue conveyor consumes to route the event
when it is due. A publish enters at the top level; any delay up to 2**levels - 1 seconds takes
at most `levels` waits.

Why this shape, rather than one TTL per message in one queue: a queue expires messages only
at its head, so an event due later would hold back one due sooner behind it. In each level
every message waits the same time and enters in time order, so its head is always the first
due. The bits are written least significant first so that a level's position in the key does
not depend on how many levels there are: raising the maximum delay adds levels on top, and
messages already on their way keep their path.

Nothing is lost between hops: every queue dead-letters at-least-once (RabbitMQ keeps the
message until the next queue confirmed it; that strategy needs `overflow = reject-publish`),
as the retry ladder does (consumers.topology). Hand-written because no library sets this up
for aio-pika; kombu's `native_delayed_delivery` is the same design for Celery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from producers.topology import Topology

__all__ = [
    "DELIVER_KEY_HEADER",
    "DELIVER_TO_HEADER",
    "DelayChain",
    "declare_delay_chain",
    "levels_for",
]

# Where the due event goes when it is not routed anew through `{ns}.events`: the exchange
# and routing key of one subscription's queue (a consumer deferred an event that came in over
# AMQP with `deliverat`, for its own subscription only; consumers.deferral).
DELIVER_TO_HEADER = "x-conveyor-deliver-to"
DELIVER_KEY_HEADER = "x-conveyor-deliver-key"
MAX_LEVELS = 32


def levels_for(max_delay: float) -> int:
    """How many levels delay up to `max_delay` seconds (0: delayed delivery is off)."""
    if max_delay <= 0:
        return 0
    return min(MAX_LEVELS, max(1, math.ceil(max_delay).bit_length()))


@dataclass(frozen=True, slots=True)
class DelayChain:
    topology: Topology
    levels: int

    @property
    def entry(self) -> str:
        """The exchange a delayed event is published to: the top level."""
        return self.level(self.levels - 1)

    @property
    def due(self) -> str:
        """Both the exchange the last level ends in (fanout) and the queue behind it."""
        return f"{self.topology.namespace}.due"

    @property
    def longest(self) -> int:
        """The longest delay in whole seconds the chain can hold."""
        return (1 << self.levels) - 1

    def level(self, index: int) -> str:
        return f"{self.topology.namespace}.delay.{index}"

    def routing_key(self, seconds: int) -> str:
        """The path for a delay of `seconds` (rounded by the caller), least significant bit
        first; every level has its bit, so no level misses the word it matches on."""
        if not 0 <= seconds <= self.longest:
            raise ValueError(f"a delay of {seconds} s does not fit {self.levels} levels")
        return ".".join("1" if seconds >> bit & 1 else "0" for bit in range(self.levels))

    def names(self) -> tuple[str, ...]:
        """Every queue (and exchange) of the chain, the due one last."""
        return (*(self.level(index) for index in range(self.levels)), self.due)


def _binding(index: int, bit: str) -> str:
    return "*." * index + bit + ".#"


def level_queue_arguments(chain: DelayChain, index: int) -> FieldTable:
    below = chain.level(index - 1) if index > 0 else chain.due
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-message-ttl": 1000 << index,
        "x-dead-letter-exchange": below,
    }


async def declare_delay_chain(channel: AbstractChannel, chain: DelayChain) -> AbstractQueue:
    """Declare the levels and `{ns}.due`, from the bottom up (each level's binding names the
    exchange below it); the due queue, to consume. Idempotent."""
    due_exchange = await channel.declare_exchange(
        chain.due, aio_pika.ExchangeType.FANOUT, durable=True
    )
    due_queue = await channel.declare_queue(
        chain.due, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await due_queue.bind(due_exchange)
    below = due_exchange
    for index in range(chain.levels):
        exchange = await channel.declare_exchange(
            chain.level(index), aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            chain.level(index), durable=True, arguments=level_queue_arguments(chain, index)
        )
        await queue.bind(exchange, routing_key=_binding(index, "1"))
        await below.bind(exchange, routing_key=_binding(index, "0"))
        below = exchange
    return due_queue
