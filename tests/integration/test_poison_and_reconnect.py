"""Messages that kill their worker, and connections cut while events flow."""

from __future__ import annotations

from typing import Any

import aio_pika

from service import Role
from tests.conftest import StartConveyor, subscription, url_with_port
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


async def test_a_message_that_kills_its_worker_again_and_again_ends_in_the_dlq(
    start_conveyor: StartConveyor, namespace: Namespace, amqp_url: str
) -> None:
    # conveyor declares the topology; the "worker" here dies holding the message, every time:
    # its channel closes before any ack, exactly what a crashed process looks like to RabbitMQ.
    conveyor = await start_conveyor(
        (subscription("poison", ("poison.*",), Recorder()),), role=Role.INGRESS
    )
    assert (await conveyor.post({"type": "poison.pill", "id": "pill"})).status == 202
    deliveries = 0
    async with await aio_pika.connect(amqp_url) as connection:
        for _ in range(30):
            channel = await connection.channel()
            queue = await channel.declare_queue(namespace.topology.queue("poison"), passive=True)
            message = await queue.get(fail=False)
            if message is None:
                break
            deliveries += 1
            await channel.close()  # the crash: unacked, back to the queue
    [dead] = await namespace.take_at_least(namespace.topology.dead_letter_queue("poison"), 1)
    assert dead.message_id == "pill"
    deaths: Any = (dead.headers or {})["x-death"]
    assert [death["reason"] for death in deaths] == ["delivery_limit"]
    assert deliveries == 21  # x-delivery-limit = 20: the 21st delivery was the last


async def test_a_connection_cut_mid_stream_loses_nothing_and_consumers_come_back(
    start_conveyor: StartConveyor, namespace: Namespace, amqp_url: str, proxy: FaultProxy
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (subscription("stream", ("stream.*",), recorder, prefetch=16, concurrency=8),),
        amqp_url_override=url_with_port(amqp_url, proxy.port),
    )
    accepted: set[str] = set()
    for n in range(300):
        if n == 150:
            proxy.cut_all()  # acks of the dead channel's delivery tags must not crash anything
        response = await conveyor.post({"type": "stream.item", "id": f"e{n}"})
        if response.status == 202:
            accepted.add(f"e{n}")
        else:
            assert response.status == 503  # refused honestly while reconnecting
    await conveyor.ready(timeout=20)

    async def all_handled() -> bool:
        return accepted <= set(recorder.ids())

    await eventually(all_handled, timeout=30, what="every accepted event to be handled")
    assert len(accepted) >= 150
    assert set(recorder.ids()) <= accepted  # nothing unexpected
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(namespace.topology.queue("stream"), passive=True)
        assert queue.declaration_result.consumer_count == 1
