"""consumers.acking on the real broker: a multiple ack settles only finished deliveries.

What the broker gives back when the channel closes is what it still held unsettled: exactly
the deliveries left running. What it dead-lettered is what was nacked or rejected: a multiple ack
that covered one of those first would have settled it as handled (and the nack would then close
the channel for an unknown delivery tag).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aio_pika
import pytest

from consumers.acking import AckCoalescer
from consumers.delivery import Delivery, DeliveryHook
from tests.support.waiting import eventually


@pytest.fixture
async def queues(amqp_url: str) -> AsyncIterator[tuple[str, str]]:
    """A queue of its own that dead-letters into a second one; both deleted afterwards."""
    work, dead = (f"test-acks-{uuid.uuid4().hex[:12]}{suffix}" for suffix in ("", ".dlq"))
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(dead, arguments={"x-queue-type": "quorum"}, durable=True)
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        }
        await channel.declare_queue(work, arguments=arguments, durable=True)
    yield work, dead
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(work)
        await channel.queue_delete(dead)


class Consuming:
    """Deliveries of `queue` taken the lean way (`DeliveryHook`), by body, and the acks the
    channel was asked to send."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.deliveries: dict[bytes, Delivery] = {}
        self.acks_sent: list[tuple[int, bool]] = []

    async def start(self, queue_name: str, bodies: list[bytes]) -> None:
        for body in bodies:
            await self.channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=queue_name
            )
        underlay = await self.channel.get_underlay_channel()
        basic_ack = underlay.basic_ack

        async def recording_ack(tag: int, *, multiple: bool = False, wait: bool = True) -> None:
            self.acks_sent.append((tag, multiple))
            await basic_ack(tag, multiple=multiple, wait=wait)

        # The test's seam: each ack frame recorded on its way out.
        underlay.basic_ack = recording_ack  # type: ignore[method-assign,assignment]
        tag = f"test-{uuid.uuid4().hex[:8]}"

        async def take(delivery: Delivery) -> None:
            self.deliveries[delivery.body] = delivery

        DeliveryHook({tag}, take, name="test").hook(underlay)
        await self.channel.set_qos(prefetch_count=len(bodies))
        queue = await self.channel.declare_queue(queue_name, passive=True)
        await queue.consume(cast("Any", take), consumer_tag=tag)

        async def all_delivered() -> bool:
            return len(self.deliveries) == len(bodies)

        await eventually(all_delivered, what="every message delivered")

    def tag(self, body: bytes) -> int:
        tag = self.deliveries[body].delivery_tag
        assert tag is not None
        return tag


async def left_in(amqp_url: str, queue_name: str, count: int) -> list[bytes]:
    """The bodies in `queue_name` once it holds `count` messages (taken out)."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()

        async def holds() -> bool:
            declared = await channel.declare_queue(queue_name, passive=True)
            return declared.declaration_result.message_count == count

        await eventually(holds, what=f"{count} messages in {queue_name}")
        queue = await channel.declare_queue(queue_name, passive=True)
        bodies = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.append(message.body)
        return sorted(bodies)


async def test_deliveries_finished_out_of_order_are_acked_and_those_still_running_never(
    amqp_url: str, queues: tuple[str, str]
) -> None:
    work, dead = queues
    bodies = [str(n).encode() for n in range(1, 7)]
    async with await aio_pika.connect(amqp_url) as connection:
        consuming = Consuming(await connection.channel())
        await consuming.start(work, bodies)
        assert [consuming.tag(body) for body in bodies] == [1, 2, 3, 4, 5, 6]
        acks = AckCoalescer()
        # 3 never finishes, 5 only once 3's neighbours have; each batch a turn of its own.
        for finished in ([b"6"], [b"4", b"1"], [b"2"], [b"5"]):
            for body in finished:
                acks.ack(consuming.deliveries[body])
            await acks.flush()
        assert not consuming.channel.is_closed
        await consuming.channel.close()
    # Runs of finished tags went as multiple acks, and none reached the running 3.
    assert consuming.acks_sent == [(6, False), (1, True), (4, False), (2, True), (5, False)]
    assert await left_in(amqp_url, work, 1) == [b"3"]  # given back: still running
    assert await left_in(amqp_url, dead, 0) == []


async def test_a_multiple_ack_passes_over_nacked_and_rejected_deliveries_between_acks(
    amqp_url: str, queues: tuple[str, str]
) -> None:
    work, dead = queues
    bodies = [str(n).encode() for n in range(1, 9)]  # 8 keeps running
    async with await aio_pika.connect(amqp_url) as connection:
        consuming = Consuming(await connection.channel())
        await consuming.start(work, bodies)
        deliveries = consuming.deliveries
        acks = AckCoalescer()
        # As the settler does: a nack or reject first, then the coalescer told; acks between.
        acks.ack(deliveries[b"1"])
        await deliveries[b"2"].nack(requeue=False)
        acks.settled(deliveries[b"2"])
        acks.ack(deliveries[b"3"])
        await deliveries[b"4"].reject(requeue=False)
        acks.settled(deliveries[b"4"])
        acks.ack(deliveries[b"5"])
        await acks.flush()
        # 7 finishes while 6's nack is on its way, before the coalescer hears of it: 7 alone.
        nacking = asyncio.ensure_future(deliveries[b"6"].nack(requeue=False))
        acks.ack(deliveries[b"7"])
        await acks.flush()
        await nacking
        acks.settled(deliveries[b"6"])
        assert not consuming.channel.is_closed  # no frame settled a tag twice
        await consuming.channel.close()
    # A multiple ack went past a nacked or rejected tag...
    assert any(multiple and tag >= 3 for tag, multiple in consuming.acks_sent)
    assert consuming.acks_sent[-1] == (7, False)
    # ... and the broker dead-lettered those (a nack, not an ack, settled them).
    assert await left_in(amqp_url, dead, 3) == [b"2", b"4", b"6"]
    assert await left_in(amqp_url, work, 1) == [b"8"]
