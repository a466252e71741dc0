"""consumers.delivery on the real broker: deliveries taken from aiormq read as aio-pika's do."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

import aio_pika

from consumers.delivery import Delivery, DeliveryHook

_PROPERTIES: dict[str, Any] = {
    "headers": {"ce-specversion": "1.0", "ce-type": "com.example.order", "attempt": 2},
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "message_id": "evt-1",
    "correlation_id": "corr-1",
    "reply_to": "replies",
    "priority": 3,
    "timestamp": dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC),
    "type": "com.example.order",
    "app_id": "shop",
}


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, body: bytes) -> None:
    await channel.default_exchange.publish(aio_pika.Message(body, **_PROPERTIES), routing_key=queue)


async def test_a_hooked_delivery_reads_as_aio_pika_reads_it_and_others_go_the_aio_pika_way(
    amqp_url: str, queue_name: str
) -> None:
    hooked: asyncio.Queue[Delivery] = asyncio.Queue()
    plain: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await hooked.put(delivery)

    async with await aio_pika.connect_robust(amqp_url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(queue_name, passive=True)
        hook = DeliveryHook({"hooked"}, take, name="test")
        underlay = await channel.get_underlay_channel()
        hook.hook(underlay)
        hook.hook(underlay)  # twice: still one delivery each
        await _publish(channel, queue_name, b'{"n": 1}')
        await queue.consume(cast("Any", hooked.put), consumer_tag="hooked")
        delivery = await asyncio.wait_for(hooked.get(), 10)
        await queue.cancel("hooked")
        # A consumer the hook was not given on the same channel: aio-pika's IncomingMessage.
        await _publish(channel, queue_name, b'{"n": 2}')
        await queue.consume(plain.put, consumer_tag="plain")
        incoming = await asyncio.wait_for(plain.get(), 10)
        for read in (delivery, incoming):
            assert read.headers == _PROPERTIES["headers"]
            for name in ("content_type", "content_encoding", "message_id", "correlation_id"):
                assert getattr(read, name) == _PROPERTIES[name]
            for name in ("reply_to", "priority", "timestamp", "type", "app_id"):
                assert getattr(read, name) == _PROPERTIES[name]
            assert read.exchange == ""
            assert read.routing_key == queue_name
            assert read.redelivered is False
        assert isinstance(delivery, Delivery)
        assert delivery.body == b'{"n": 1}'
        assert delivery.delivery_tag == 1
        assert isinstance(incoming, aio_pika.IncomingMessage)
        assert incoming.body == b'{"n": 2}'
        assert hooked.empty()  # hooked twice, delivered once
        await incoming.ack()
        # The hooked delivery, never acked, is nacked back through its own channel.
        await delivery.nack(requeue=True)
        await queue.cancel("plain")
        await _publish(channel, queue_name, b"")  # so the queue holds two again
    async with await aio_pika.connect(amqp_url) as checking:
        reading = await checking.channel()
        declared = await reading.declare_queue(queue_name, passive=True)
        bodies = []
        while (left := await declared.get(fail=False, no_ack=True)) is not None:
            bodies.append(left.body)
        assert sorted(bodies) == [b"", b'{"n": 1}']


async def test_the_tasks_of_a_closed_channel_are_cancelled_and_the_broker_has_them_back(
    amqp_url: str, queue_name: str
) -> None:
    started: list[object] = []
    cancelled = asyncio.Event()

    async def hang(delivery: Delivery) -> None:
        started.append(delivery)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        hook = DeliveryHook({"hang"}, hang, name="test")
        hook.hook(await channel.get_underlay_channel())
        await _publish(channel, queue_name, b"x")
        await queue.consume(cast("Any", hang), consumer_tag="hang")
        for _ in range(200):
            if started:
                break
            await asyncio.sleep(0.05)
        assert len(started) == 1
        assert isinstance(started[0], Delivery)  # the hook's task, not aio-pika's
        await channel.close()
        await asyncio.wait_for(cancelled.wait(), 10)
        other = await connection.channel()
        declared = await other.declare_queue(queue_name, passive=True)
        message = None
        for _ in range(100):
            if (message := await declared.get(fail=False, no_ack=True)) is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None
        assert message.body == b"x"
        assert message.redelivered is True


async def test_bodies_of_no_frame_one_frame_and_several_frames_are_read_whole(
    amqp_url: str, queue_name: str
) -> None:
    hooked: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await hooked.put(delivery)

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        frame_max = underlay.connection.connection_tune.frame_max
        # Empty, one frame, and a body spread over three frames and a bit.
        bodies = [b"", b"small", bytes(range(256)) * (frame_max * 3 // 256 + 7)]
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
        DeliveryHook({"whole"}, take, name="test").hook(underlay)
        queue = await channel.declare_queue(queue_name, passive=True)
        await queue.consume(cast("Any", take), consumer_tag="whole")
        taken = [await asyncio.wait_for(hooked.get(), 10) for _ in bodies]
        assert all(isinstance(delivery, Delivery) for delivery in taken)
        assert [delivery.body for delivery in taken] == bodies
        assert {type(delivery.body) for delivery in taken} == {bytes}  # as handlers get it
        for delivery in taken:
            await delivery.nack(requeue=False)
