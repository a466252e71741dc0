"""producers.pipeline against the real broker: every publish confirmed on its own, in order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import aio_pika
import aiormq
import pytest
from pamqp.commands import Basic
from structlog.testing import capture_logs

from producers.frames import WireMessage
from producers.pipeline import ChannelPipeline


async def _take(
    amqp_url: str, queue: str, count: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        for _ in range(200):
            while (
                len(taken) < count
                and (message := await declared.get(fail=False, no_ack=True)) is not None
            ):
                taken.append(message)
            if len(taken) >= count:
                break
            await asyncio.sleep(0.05)
    return taken


async def test_concurrent_publishes_are_each_confirmed_and_arrive_in_order(
    amqp_url: str, queue_name: str
) -> None:
    count = 2_000
    async with await aio_pika.connect(amqp_url) as connection:
        pipeline = ChannelPipeline(await connection.channel(publisher_confirms=True))
        current = await pipeline.current()
        confirmations = [
            current.publish(
                WireMessage(
                    f"body-{index}".encode(),
                    message_id=f"id-{index}",
                    headers={"ce-id": f"id-{index}", "ce-type": "t", "x-n": index},
                    content_type="text/plain",
                    correlation_id="c",
                ),
                exchange="",
                routing_key=queue_name,
                mandatory=True,
            )
            for index in range(count)
        ]
        results = await asyncio.gather(*confirmations)
        pipeline.close()
    assert all(isinstance(result, Basic.Ack) for result in results)
    messages = await _take(amqp_url, queue_name, count)
    assert [m.message_id for m in messages] == [f"id-{index}" for index in range(count)]
    last = messages[-1]
    assert last.body == f"body-{count - 1}".encode()
    headers = dict(last.headers)
    headers.pop("x-delivery-count", None)  # the quorum queue's own
    assert headers == {"ce-id": f"id-{count - 1}", "ce-type": "t", "x-n": count - 1}
    assert (last.content_type, last.correlation_id, last.delivery_mode) == (
        "text/plain",
        "c",
        aio_pika.DeliveryMode.PERSISTENT,
    )


async def test_an_unroutable_mandatory_publish_comes_back_and_the_next_is_acked(
    amqp_url: str, queue_name: str
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        pipeline = ChannelPipeline(await connection.channel(publisher_confirms=True))
        current = await pipeline.current()
        lost = current.publish(
            WireMessage(b"x", message_id="nowhere"),
            exchange="",
            routing_key=f"test-no-such-queue-{uuid.uuid4().hex}",
            mandatory=True,
        )
        kept = current.publish(
            WireMessage(b"y", message_id="somewhere"),
            exchange="",
            routing_key=queue_name,
            mandatory=True,
        )
        returned, acked = await asyncio.gather(lost, kept)
        pipeline.close()
    assert not isinstance(returned, Basic.Ack)
    assert cast("Any", returned).body == b"x"
    assert isinstance(acked, Basic.Ack)
    assert [m.body for m in await _take(amqp_url, queue_name, 1)] == [b"y"]


async def test_a_body_larger_than_a_frame_arrives_whole(amqp_url: str, queue_name: str) -> None:
    body = bytes(range(256)) * 1_200  # 307,200 bytes: three body frames at frame_max 131072
    async with await aio_pika.connect(amqp_url) as connection:
        pipeline = ChannelPipeline(await connection.channel(publisher_confirms=True))
        current = await pipeline.current()
        assert len(body) > current.channel.max_content_size * 2
        result = await current.publish(
            WireMessage(body, message_id="big"), exchange="", routing_key=queue_name, mandatory=True
        )
        pipeline.close()
    assert isinstance(result, Basic.Ack)
    (message,) = await _take(amqp_url, queue_name, 1)
    assert message.body == body


async def test_a_closed_channel_fails_what_waits_and_refuses_new_publishes(
    amqp_url: str, queue_name: str
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        pipeline = ChannelPipeline(channel)
        current = await pipeline.current()
        waiting = [
            current.publish(
                WireMessage(b"z", message_id=f"w-{index}"),
                exchange="",
                routing_key=queue_name,
                mandatory=True,
            )
            for index in range(50)
        ]
        # Publishing to an exchange that does not exist makes the broker close the channel.
        doomed = current.publish(
            WireMessage(b"z", message_id="doomed"),
            exchange=f"test-no-such-exchange-{uuid.uuid4().hex}",
            routing_key="k",
            mandatory=True,
        )
        outcomes = await asyncio.gather(*waiting, doomed, return_exceptions=True)
        assert isinstance(outcomes[-1], BaseException)  # never confirmed
        assert all(
            isinstance(outcome, Basic.Ack | BaseException) for outcome in outcomes
        )  # each one settled: acked before the close, or failed by it
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
            _ = current.publish(
                WireMessage(b"late"), exchange="", routing_key=queue_name, mandatory=True
            )


async def test_a_confirm_after_the_publish_was_given_up_is_logged_as_published(
    amqp_url: str, queue_name: str
) -> None:
    """A publisher that stopped waiting (its timeout, a cancelled request) reported a failure;
    the confirm that comes after says the message is in RabbitMQ after all."""

    def message(message_id: str) -> WireMessage:
        return WireMessage(b"x", message_id=message_id, headers={}, content_type="text/plain")

    async with await aio_pika.connect(amqp_url) as connection:
        pipeline = ChannelPipeline(await connection.channel(publisher_confirms=True))
        current = await pipeline.current()
        with capture_logs() as logs:
            given_up = current.publish(
                message("given-up"), exchange="", routing_key=queue_name, mandatory=True
            )
            given_up.cancel()  # as a publish timeout does, before the confirm could come
            # Confirms come in publish order: once the next one is in, so was the first one's.
            waited = await current.publish(
                message("waited"), exchange="", routing_key=queue_name, mandatory=True
            )
        pipeline.close()
    assert isinstance(waited, Basic.Ack)
    late = [line for line in logs if line["event"].startswith("RabbitMQ confirmed a message")]
    assert [line["message_id"] for line in late] == ["given-up"]
    assert [message.message_id for message in await _take(amqp_url, queue_name, 2)] == [
        "given-up",
        "waited",
    ]
