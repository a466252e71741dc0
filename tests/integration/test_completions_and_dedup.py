"""Completion events on {ns}.results, and effectively-once handling of redelivered events."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from consumers import Event, PermanentError
from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_metrics import scrape, value
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually


@dataclass
class ResultsProbe:
    """An exclusive queue bound to {ns}.results: what a subscriber to completions receives."""

    queue: AbstractQueue
    received: list[AbstractIncomingMessage]

    async def drain(self) -> list[AbstractIncomingMessage]:
        """Every completion received so far; called once what announces them has settled."""
        while (message := await self.queue.get(fail=False, no_ack=True)) is not None:
            self.received.append(message)
        return self.received

    async def through(self, sentinel_id: str) -> list[AbstractIncomingMessage]:
        """The completions up to the sentinel's (left out). A delivery is acked only after its
        completion was confirmed: of a subscription that takes one delivery at a time, the
        sentinel's completion comes after every one announced for the deliveries before it."""

        async def arrived() -> bool:
            await self.drain()
            return any(subject(message) == sentinel_id for message in self.received)

        await eventually(arrived, what=f"the completion of {sentinel_id}")
        return [message for message in self.received if subject(message) != sentinel_id]


def subject(message: AbstractIncomingMessage) -> object:
    return (message.headers or {}).get("ce-subject")


async def settled(conveyor: Running, subscription: str) -> float:
    """The deliveries `subscription` settled, whatever their outcome."""
    samples = await scrape(conveyor)
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "conveyor_deliveries_total" and ("subscription", subscription) in labels
    )


@pytest.fixture
async def results(namespace: Namespace) -> AsyncIterator[ResultsProbe]:
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            namespace.topology.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"probe-{uuid.uuid4().hex}", exclusive=True)
        await queue.bind(exchange, routing_key="conveyor.event.#")
        yield ResultsProbe(queue, [])


async def publish(namespace: Namespace, event_id: str, times: int, source: str = "/amqp") -> None:
    """The same event `times` times straight over AMQP, as a duplicate publish would send it."""
    headers = {"ce-id": event_id, "ce-source": source, "ce-type": "order.placed"}
    headers |= {"ce-specversion": "1.0"}
    for _ in range(times):
        await namespace.publish_raw(
            b'{"n": 1}',
            routing_key="order.placed",
            headers=headers,
            content_type="application/json",
            message_id=event_id,
        )


async def test_results_exchange_receives_succeeded_and_dead_lettered_events(
    start_conveyor: StartConveyor, results: ResultsProbe
) -> None:
    async def handle(event: object) -> None:
        if getattr(event, "type", "") == "order.refused":
            raise PermanentError("refused by policy")

    conveyor = await start_conveyor(
        (subscription("orders", ("order.*",), handle, prefetch=1, concurrency=1, completions=True),)
    )
    for document in (
        {"type": "order.placed", "id": "ok-1", "source": "/shop"},
        {"type": "order.refused", "id": "bad-1", "source": "/shop"},
        {"type": "order.placed", "id": "sentinel", "source": "/shop"},
    ):
        assert (await conveyor.post(document)).status == 202

    received = await results.through("sentinel")

    assert len(received) == 2
    by_key = {message.routing_key or "": message for message in received}
    assert sorted(by_key) == [
        "conveyor.event.dead_lettered.orders",
        "conveyor.event.succeeded.orders",
    ]
    succeeded = by_key["conveyor.event.succeeded.orders"]
    headers = succeeded.headers or {}
    assert headers["ce-type"] == "conveyor.event.succeeded"
    assert headers["ce-source"] == "conveyor"
    assert headers["ce-subject"] == "ok-1"
    assert headers["ce-subscription"] == "orders"
    assert succeeded.content_type == "application/json"
    data = orjson.loads(succeeded.body)
    assert data["event"] == {"id": "ok-1", "source": "/shop", "type": "order.placed"}
    assert (data["state"], data["attempts"], data["subscription"]) == ("succeeded", 1, "orders")

    dead = by_key["conveyor.event.dead_lettered.orders"]
    assert (dead.headers or {})["ce-subject"] == "bad-1"
    dead_data = orjson.loads(dead.body)
    assert dead_data["reason"] == "permanent-error"
    assert dead_data["error"] == {"class": "PermanentError", "message": "refused by policy"}


async def test_a_duplicate_of_a_succeeded_event_is_acked_without_running_the_handler(
    start_conveyor: StartConveyor, namespace: Namespace, results: ResultsProbe
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (
            subscription(
                "orders", ("order.*",), recorder, prefetch=1, concurrency=1, completions=True
            ),
        )
    )
    await publish(namespace, "dup-1", 1)
    await recorder.wait_for(1)
    _, first = await conveyor.status("/v1/events/dup-1", wait="10s")
    assert first["subscriptions"]["orders"]["state"] == "succeeded"

    # The same event again, as a duplicate publish or a redelivery after a crash would bring it.
    await publish(namespace, "dup-1", 2)
    await publish(namespace, "sentinel", 1)  # handled after both duplicates were settled
    completions = await results.through("sentinel")
    assert len(completions) == 3

    assert recorder.ids() == ["dup-1", "sentinel"]
    assert await namespace.depth(namespace.topology.queue("orders")) == 0
    # Each delivery announced the outcome, all under one id, so a receiver can drop repeats.
    assert len({(message.headers or {})["ce-id"] for message in completions}) == 1
    _, after = await conveyor.status("/v1/events/dup-1")
    assert after["subscriptions"]["orders"]["attempts"] == 1


async def test_a_subscription_that_opts_out_runs_the_handler_for_every_delivery(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    sub = subscription("audit", ("order.*",), recorder)
    await start_conveyor(
        (
            type(sub)(
                name=sub.name,
                events=sub.events,
                handler=sub.handler,
                handler_path=sub.handler_path,
                retry=sub.retry,
                deduplicate=False,
                prefetch=1,  # one at a time: the sentinel is handled after the duplicates
                concurrency=1,
            ),
        )
    )
    await publish(namespace, "dup-2", 1)
    await recorder.wait_for(1)

    await publish(namespace, "dup-2", 2)

    await publish(namespace, "sentinel", 1)

    await recorder.wait_for(4)
    assert recorder.ids() == ["dup-2"] * 3 + ["sentinel"]


async def test_a_subscription_without_completions_records_outcomes_and_announces_none(
    start_conveyor: StartConveyor, namespace: Namespace, results: ResultsProbe
) -> None:
    quiet_handled = Recorder()

    async def quiet_handle(event: Event) -> None:
        await quiet_handled(event)
        if event.type == "order.refused":
            raise PermanentError("refused by policy")

    async def loud_handle(event: Event) -> None:
        if event.type == "order.refused":
            raise PermanentError("refused by policy")

    quiet = dataclasses.replace(
        subscription("quiet", ("order.*",), quiet_handle), completions=False
    )
    loud = subscription("loud", ("order.*",), loud_handle, completions=True)
    conveyor = await start_conveyor((quiet, loud))
    for document in (
        {"type": "order.placed", "id": "q-ok", "source": "/shop"},
        {"type": "order.refused", "id": "q-bad", "source": "/shop"},
    ):
        assert (await conveyor.post(document)).status == 202

    # Only the subscription that keeps its completions announces its two outcomes. A delivery
    # is counted settled after its completion was confirmed: once both subscriptions settled
    # both events, every completion announced is in the probe's queue.
    async def both_settled() -> bool:
        return await settled(conveyor, "quiet") == await settled(conveyor, "loud") == 2

    await eventually(both_settled, what="both events settled in both subscriptions")
    completions = await results.drain()
    assert sorted(message.routing_key or "" for message in completions) == [
        "conveyor.event.dead_lettered.loud",
        "conveyor.event.succeeded.loud",
    ]
    # Its outcomes are recorded all the same.
    _, placed = await conveyor.status("/v1/events/q-ok", wait="10s")
    assert placed["subscriptions"]["quiet"]["state"] == "succeeded"
    _, refused = await conveyor.status("/v1/events/q-bad", wait="10s")
    assert refused["subscriptions"]["quiet"]["state"] == "dead-lettered"
    assert await namespace.depth(namespace.topology.dead_letter_queue("quiet")) == 1

    # Deduplication reads the recorded success: a duplicate is acked, not handled again.
    await publish(namespace, "q-ok", 1, source="/shop")

    async def skipped() -> bool:
        samples = await scrape(conveyor)
        return (
            value(samples, "conveyor_deliveries_total", subscription="quiet", outcome="skipped")
            == 1
        )

    async def loud_settled_it_too() -> bool:
        return await settled(conveyor, "loud") == 3

    await eventually(skipped, what="the duplicate skipped")
    await eventually(loud_settled_it_too, what="the duplicate settled by loud too")
    assert sorted(quiet_handled.ids()) == ["q-bad", "q-ok"]
    assert len(await results.drain()) == 3  # loud announced its skip; quiet nothing
    # Every delivery was acked: stopped, conveyor's channels close and whatever they held
    # unacked would be ready in its queue again.
    await conveyor.client.close()
    for name in ("quiet", "loud"):
        assert await namespace.depth(namespace.topology.queue(name)) == 0, name
