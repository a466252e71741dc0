"""The dedup lookup only where a duplicate can exist: each path against the real broker.

The promise stays visible in each: every event answered 202 reaches its handler, and a
duplicate (over AMQP, redelivered, or a publish retried after a lost confirm) is looked up and
not handled twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika

from consumers.subscription import Subscription
from producers.first_copy import FIRST_COPY_HEADER
from service import Role
from tests.conftest import Running, StartConveyor, subscription, url_with_port
from tests.integration.test_completions_and_dedup import publish
from tests.integration.test_metrics import scrape, value
from tests.support.namespace import Namespace
from tests.support.proxy import FaultProxy
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


async def lookups(conveyor: Running, name: str = "orders") -> tuple[float, float]:
    """(lookups made, lookups skipped) by `name`'s deliveries in this process."""
    samples = await scrape(conveyor)
    made = value(samples, "conveyor_dedup_lookups_total", subscription=name)
    skipped = value(samples, "conveyor_dedup_lookups_skipped_total", subscription=name)
    return made, skipped


def orders(recorder: Recorder) -> Subscription:
    # One delivery at a time: a sentinel sent last is handled after everything before it.
    return subscription("orders", ("order.*",), recorder, prefetch=1, concurrency=1)


async def test_a_first_copy_from_the_ingress_is_handled_without_a_lookup(
    start_conveyor: StartConveyor,
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((orders(recorder),))
    response = await conveyor.post({"type": "order.placed", "id": "f-1", "source": "/shop"})
    assert response.status == 202
    batch = [
        {"type": "order.placed", "id": f"f-{n}", "source": "/shop", "specversion": "1.0"}
        for n in (2, 3)
    ]
    response = await conveyor.post(batch, "application/cloudevents-batch+json")
    assert response.status == 202

    await recorder.wait_for(3)
    assert sorted(recorder.ids()) == ["f-1", "f-2", "f-3"]
    # Counted before the handler ran: each of the three was let through without asking.
    assert await lookups(conveyor) == (0, 3)
    _, status = await conveyor.status("/v1/events/f-1", wait="10s")
    assert status["subscriptions"]["orders"]["state"] == "succeeded"


async def test_a_redelivered_first_copy_is_looked_up(
    start_conveyor: StartConveyor, namespace: Namespace, tmp_path: Path
) -> None:
    shared = f"sqlite:///{tmp_path}/shared.db"
    recorder = Recorder()
    ingress = await start_conveyor((orders(recorder),), role=Role.INGRESS, store_url=shared)
    response = await ingress.post({"type": "order.placed", "id": "r-1", "source": "/shop"})
    assert response.status == 202

    # A consumer took it and let it go unsettled (a crash, a lost channel): RabbitMQ hands it
    # out again as redelivered, with its mark still on it.
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(namespace.topology.queue("orders"), passive=True)
        message = await queue.get(timeout=10)
        assert message is not None
        assert not message.redelivered
        assert FIRST_COPY_HEADER in (message.headers or {})  # the ingress marked it
        await message.nack(requeue=True)

    worker = await start_conveyor((orders(recorder),), role=Role.WORKER, store_url=shared)
    [handled] = await recorder.wait_for(1)
    assert (handled.id, handled.redelivered) == ("r-1", True)
    assert await lookups(worker) == (1, 0)


async def test_an_amqp_duplicate_is_looked_up_and_not_handled_twice(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor((orders(recorder),))
    response = await conveyor.post({"type": "order.placed", "id": "d-1", "source": "/shop"})
    assert response.status == 202
    await recorder.wait_for(1)
    _, status = await conveyor.status("/v1/events/d-1", wait="10s")
    assert status["subscriptions"]["orders"]["state"] == "succeeded"

    # The same event over AMQP: plain, and with a mark that is not its own (made up, or
    # copied from another event): neither is taken for a first copy.
    await publish(namespace, "d-1", 1, source="/shop")
    forged = {"ce-id": "d-1", "ce-source": "/shop", "ce-type": "order.placed"}
    forged |= {"ce-specversion": "1.0", FIRST_COPY_HEADER: "0" * 32}
    await namespace.publish_raw(b"{}", routing_key="order.placed", headers=forged, message_id="d-1")
    await publish(namespace, "sentinel", 1)  # handled after both duplicates were settled

    await recorder.wait_for(2)
    assert recorder.ids() == ["d-1", "sentinel"]
    assert await lookups(conveyor) == (3, 1)  # the duplicates and the sentinel; the first not
    samples = await scrape(conveyor)
    skipped = value(samples, "conveyor_deliveries_total", subscription="orders", outcome="skipped")
    assert skipped == 2


async def test_a_publish_retried_after_a_lost_confirm_is_looked_up_and_not_handled_twice(
    start_conveyor: StartConveyor,
    namespace: Namespace,
    proxy: FaultProxy,
    amqp_url: str,
    store_url: str,
) -> None:
    recorder = Recorder()
    worker = await start_conveyor((orders(recorder),), role=Role.WORKER, store_url=store_url)
    ingress = await start_conveyor(
        (orders(recorder),),
        role=Role.INGRESS,
        store_url=store_url,
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=0.5,
    )
    document = {"type": "order.placed", "id": "t-1", "source": "/shop"}
    # The publish reaches RabbitMQ, its confirm does not come back in time: 503.
    proxy.replies_stalled = True
    response = await ingress.post(document)
    assert response.status == 503
    # That first copy was marked (its claim was the key's first) and is handled.
    [handled] = await recorder.wait_for(1)
    assert handled.id == "t-1"
    proxy.replies_stalled = False

    async def succeeded() -> bool:
        _, status = await ingress.status("/v1/events/t-1")
        return bool(status.get("done"))

    await eventually(succeeded, what="t-1 recorded as succeeded")
    # The client retries, as a 503 tells it to: accepted, published again, without a mark.
    for _ in range(100):
        response = await ingress.post(document)
        if response.status == 202:
            break
        await asyncio.sleep(0.1)
    assert response.status == 202
    assert "Idempotent-Replayed" not in response.headers
    await publish(namespace, "sentinel", 1)

    await recorder.wait_for(2)
    assert recorder.ids() == ["t-1", "sentinel"]  # the retried copy was skipped
    # The first copy went without a lookup; the retried copy and the sentinel asked.
    assert await lookups(worker) == (2, 1)
    samples = await scrape(worker)
    skipped = value(samples, "conveyor_deliveries_total", subscription="orders", outcome="skipped")
    assert skipped == 1
