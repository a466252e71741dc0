"""What conveyor is measured against, each run as a process of its own:

    python -m bench.peers ceiling-publish NAMESPACE COUNT   # raw aio-pika, prints JSON
    python -m bench.peers ceiling-consume NAMESPACE         # raw aio-pika, until SIGTERM
    python -m bench.peers ceiling-latency NAMESPACE RATE SECONDS  # raw publish to consume, JSON
    python -m bench.peers wire-consume NAMESPACE            # raw aiormq, until SIGTERM
    python -m bench.peers wire-consume-announce NAMESPACE   # the same, one confirmed publish each
    python -m bench.peers naive PORT NAMESPACE              # aiohttp + one aio-pika publish
    python -m bench.peers faststream-http PORT NAMESPACE    # aiohttp + FastStream's publish
    python -m bench.peers faststream-consume NAMESPACE      # a FastStream subscriber

All of them work on conveyor's topology for the subscription `sink` in NAMESPACE (declared by
bench.harness.declare_namespace): they publish 1 KB persistent messages with publisher confirms
and `mandatory` to `{ns}.events` and consume `{ns}.sink` (a quorum queue, conveyor's arguments)
with conveyor's default prefetch and one ack per message. The HTTP peers answer POST /v1/events
(a structured-mode CloudEvent: parsed, published as it came, 202 after the confirm) and GET
/readyz. FastStream logs nothing per message here (its default is two INFO lines per message),
so it does the same work as conveyor, which logs nothing per event at its default level.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractExchange
from aiohttp import web
from aiormq.abc import DeliveredMessage

from bench.harness import (
    AMQP_URL,
    PREFETCH,
    SINK,
    event_document,
    latency_figures,
    sink_queue_arguments,
)
from producers.topology import Topology

CEILING_IN_FLIGHT = 256
EXCHANGE = web.AppKey("exchange", AbstractExchange)


def wire_message(event_id: str) -> aio_pika.Message:
    """A 1 KB event as conveyor writes it on the wire (binary mode, `ce-` headers)."""
    document = event_document(event_id)
    data = orjson.dumps(document.pop("data"))
    content_type = document.pop("datacontenttype")
    return aio_pika.Message(
        data,
        headers={f"ce-{name}": value for name, value in document.items()},
        content_type=content_type,
        message_id=event_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def ceiling_publish(namespace: str, count: int) -> dict[str, Any]:
    """Publish `count` messages, `CEILING_IN_FLIGHT` awaiting their confirm at any time."""
    run = uuid.uuid4().hex[:8]
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(namespace).events_exchange)
        slots = asyncio.Semaphore(CEILING_IN_FLIGHT)

        async def one(index: int) -> None:
            async with slots:
                await exchange.publish(
                    wire_message(f"{run}-{index}"), routing_key="bench.event", mandatory=True
                )

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                await slots.acquire()  # bounds the tasks alive, not only the publishes
                slots.release()
                group.create_task(one(index))
        seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "messages_per_second": count / seconds}


async def ceiling_consume(namespace: str) -> None:
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(Topology(namespace).queue(SINK))

        async def take() -> None:
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()

        taking = asyncio.create_task(take())
        await _stop_on_sigterm().wait()
        taking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await taking


# What a completion event weighs: a small JSON body and seven string headers.
_ANNOUNCEMENT = orjson.dumps({"event": {"id": str(uuid.uuid4())}, "pad": "x" * 150})
_ANNOUNCEMENT_HEADERS: dict[str, Any] = {
    f"ce-{name}": "x" * 36
    for name in ("id", "source", "type", "time", "subject", "specversion", "subscription")
}


async def wire_consume(namespace: str, *, announce: bool) -> None:
    """The floor under conveyor's consumer: aiormq without aio-pika, one task per delivery (as
    aiormq runs its consumers) and one ack each; with `announce`, each delivery first publishes
    one confirmed message (not routed anywhere, as conveyor's completion event with no queue
    bound) and waits for its confirm, which is the wire work of conveyor's consume."""
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.basic_qos(prefetch_count=PREFETCH)
        properties = aiormq.spec.Basic.Properties(
            headers=_ANNOUNCEMENT_HEADERS, content_type="application/json", delivery_mode=2
        )

        async def on_message(message: DeliveredMessage) -> None:
            if announce:
                await channel.basic_publish(
                    _ANNOUNCEMENT, exchange="", routing_key="", properties=properties
                )
            tag = message.delivery_tag
            assert tag is not None  # noqa: S101 - a consumer's delivery always has one
            await channel.basic_ack(tag)

        await channel.basic_consume(Topology(namespace).queue(SINK), on_message)
        await _stop_on_sigterm().wait()
    finally:
        await connection.close()


async def ceiling_latency(namespace: str, rate: float, seconds: float) -> dict[str, Any]:
    """Raw aio-pika at `rate` messages/s for `seconds`: publish (confirm) to consume start.

    The floor under conveyor's ingest-to-handler latency: the same quorum queue and message,
    no HTTP, no store, one process publishing on schedule and consuming.
    """
    latencies: list[float] = []
    count = int(rate * seconds)
    async with await aio_pika.connect(AMQP_URL) as connection:
        publishing = await connection.channel(publisher_confirms=True)
        exchange = await publishing.get_exchange(Topology(namespace).events_exchange)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=PREFETCH)
        queue = await consuming.get_queue(Topology(namespace).queue(SINK))
        all_in = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            sent = message.headers.get("x-benchsent")
            latencies.append(time.time() - float(str(sent)))
            await message.ack()
            if len(latencies) >= count:
                all_in.set()

        await queue.consume(on_message)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                message = wire_message(f"latency-{index}")
                message.headers["x-benchsent"] = repr(time.time())
                group.create_task(
                    exchange.publish(message, routing_key="bench.event", mandatory=True)
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout=30)
    return {"rate": rate, **latency_figures(latencies)}


def _stop_on_sigterm() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _readyz(_request: web.Request) -> web.Response:
    return web.Response(text="ready")


async def _naive_ingest(request: web.Request) -> web.Response:
    body = await request.read()
    document = orjson.loads(body)
    await request.app[EXCHANGE].publish(
        aio_pika.Message(
            body,
            content_type=request.content_type,
            message_id=document["id"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=document["type"],
        mandatory=True,
    )
    return web.json_response({"id": document["id"]}, status=202)


def naive_app(namespace: str) -> web.Application:
    async def connect(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await connection.channel(publisher_confirms=True)
        app[EXCHANGE] = await channel.get_exchange(Topology(namespace).events_exchange)
        yield
        await connection.close()

    app = web.Application()
    app.cleanup_ctx.append(connect)
    app.router.add_post("/v1/events", _naive_ingest)
    app.router.add_get("/readyz", _readyz)
    return app


def faststream_app(namespace: str) -> web.Application:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange  # noqa: PLC0415 - the bench extra

    broker = RabbitBroker(AMQP_URL, logger=None)
    exchange = RabbitExchange(
        Topology(namespace).events_exchange, type=ExchangeType.TOPIC, declare=False
    )

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        document = orjson.loads(body)
        await broker.publish(
            body,
            exchange=exchange,
            routing_key=document["type"],
            persist=True,
            mandatory=True,
            message_id=document["id"],
            content_type=request.content_type,
        )
        return web.json_response({"id": document["id"]}, status=202)

    async def connect(_app: web.Application) -> AsyncIterator[None]:
        await broker.start()
        yield
        await broker.stop()

    app = web.Application()
    app.cleanup_ctx.append(connect)
    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/readyz", _readyz)
    return app


async def faststream_consume(namespace: str) -> None:
    from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue  # noqa: PLC0415 - the bench extra

    broker = RabbitBroker(AMQP_URL, logger=None)
    # FastStream types the arguments as a TypedDict of the keys it knows; these are conveyor's.
    arguments: Any = sink_queue_arguments(namespace)
    queue = RabbitQueue(
        Topology(namespace).queue(SINK), QueueType.QUORUM, durable=True, arguments=arguments
    )

    @broker.subscriber(queue, channel=Channel(prefetch_count=PREFETCH))
    async def handle(event: dict[str, Any]) -> None:
        """A no-op handler, like conveyor's `consumers.builtin:discard`."""

    await broker.start()
    try:
        await _stop_on_sigterm().wait()
    finally:
        await broker.stop()


def main(arguments: list[str]) -> None:
    match arguments:
        case ["ceiling-publish", namespace, count]:
            result = asyncio.run(ceiling_publish(namespace, int(count)))
            print(orjson.dumps(result).decode())
        case ["ceiling-consume", namespace]:
            asyncio.run(ceiling_consume(namespace))
        case ["ceiling-latency", namespace, rate, seconds]:
            result = asyncio.run(ceiling_latency(namespace, float(rate), float(seconds)))
            print(orjson.dumps(result).decode())
        case ["wire-consume", namespace]:
            asyncio.run(wire_consume(namespace, announce=False))
        case ["wire-consume-announce", namespace]:
            asyncio.run(wire_consume(namespace, announce=True))
        case ["naive", port, namespace]:
            web.run_app(naive_app(namespace), host="127.0.0.1", port=int(port), print=None)
        case ["faststream-http", port, namespace]:
            web.run_app(faststream_app(namespace), host="127.0.0.1", port=int(port), print=None)
        case ["faststream-consume", namespace]:
            asyncio.run(faststream_consume(namespace))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
