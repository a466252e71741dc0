"""Attribute filters through the real broker: which handler ran, and `filtered` where not."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from consumers.filters import parse_filters
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from service.broker.topology_plan import plan_topology
from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_completions_and_dedup import ResultsProbe, subject
from tests.integration.test_metrics import scrape, value
from tests.support.namespace import Namespace
from tests.support.ordering import KeyedRecorder, order_violations, ordered, publish_keys
from tests.support.recorder import Recorder

TOKEN = "ops-token-0123456789"

# One subscription per filter kind, all bound to "order.#"; (filters as in TOML).
KINDS: dict[str, list[dict[str, Any]]] = {
    "exact": [{"exact": {"priority": "high"}}],
    "prefix": [{"prefix": {"source": "/shop/eu"}}],
    "suffix": [{"suffix": {"type": ".refund"}}],
    "not": [{"not": {"exact": {"subject": "test"}}}],
    "all": [{"all": [{"prefix": {"source": "/shop/eu"}}, {"exact": {"priority": "high"}}]}],
    "any": [{"any": [{"exact": {"priority": "high"}}, {"suffix": {"type": ".refund"}}]}],
    "issue": [
        {"prefix": {"source": "/shop/eu"}},
        {"not": {"exact": {"subject": "test"}}},
        {"any": [{"exact": {"priority": "high"}}, {"suffix": {"type": ".refund"}}]},
    ],
}

# The events, and the kinds whose filters each one passes.
EVENTS: list[tuple[dict[str, Any], set[str]]] = [
    (
        {"id": "e1", "source": "/shop/eu/berlin", "type": "order.created", "priority": "high"},
        {"exact", "prefix", "not", "all", "any", "issue"},
    ),
    (
        {"id": "e2", "source": "/shop/us", "type": "order.refund", "subject": "test"},
        {"suffix", "any"},
    ),
    (
        {"id": "e3", "source": "/shop/eu", "type": "order.refund", "priority": "HIGH"},
        {"prefix", "suffix", "not", "any", "issue"},  # exact is case-sensitive
    ),
    (
        {"id": "e4", "source": "/SHOP/eu", "type": "order.created", "subject": "live"},
        {"not"},  # no priority: no exact match; a different case: no prefix
    ),
    (
        {
            "id": "e5",
            "source": "/shop/eu/paris",
            "type": "order.created",
            "subject": "test",
            "priority": "high",
        },
        {"exact", "prefix", "all", "any"},
    ),
]


def filtered_subscription(
    name: str, filters: list[dict[str, Any]], handler: Recorder
) -> Subscription:
    return dataclasses.replace(
        subscription(name, ("order.#",), handler), filters=parse_filters(filters)
    )


@pytest.fixture
async def completions(namespace: Namespace) -> AsyncIterator[ResultsProbe]:
    """What a subscriber to {ns}.results receives."""
    async with await aio_pika.connect(namespace.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            namespace.topology.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"probe-{uuid.uuid4().hex}", exclusive=True)
        await queue.bind(exchange, routing_key="conveyor.event.#")
        yield ResultsProbe(queue, [])


async def status_of(conveyor: Running, event_id: str) -> dict[str, Any]:
    status, body = await conveyor.status(f"/v1/events/{event_id}", wait="15s")
    assert status == 200, body
    assert body["done"] is True, body
    return dict(body)


async def test_each_filter_kind_runs_its_handler_only_for_the_events_it_passes(
    start_conveyor: StartConveyor,
) -> None:
    recorders = {kind: Recorder() for kind in KINDS}
    everything = Recorder()
    subscriptions = (
        *(filtered_subscription(kind, KINDS[kind], recorders[kind]) for kind in KINDS),
        subscription("everything", ("order.#",), everything),
    )
    conveyor = await start_conveyor(subscriptions)
    for attributes, _ in EVENTS:
        response = await conveyor.post({"specversion": "1.0", **attributes, "data": {}})
        assert response.status == 202, await response.text()

    for attributes, passes in EVENTS:
        body = await status_of(conveyor, attributes["id"])
        states = {name: entry["state"] for name, entry in body["subscriptions"].items()}
        expected = {kind: "succeeded" if kind in passes else "filtered" for kind in KINDS}
        assert states == {**expected, "everything": "succeeded"}, attributes["id"]
        # Left out here, handled there: the event as a whole succeeded.
        assert body["state"] == "succeeded"
        assert body["subscriptions"]["exact"]["attempts"] == (1 if "exact" in passes else 0)

    # Every event is done everywhere, so every handler that was to run has run.
    assert sorted(everything.ids()) == ["e1", "e2", "e3", "e4", "e5"]
    for kind, recorder in recorders.items():
        ran = sorted(recorder.ids())
        assert ran == sorted(a["id"] for a, passes in EVENTS if kind in passes), kind
    assert recorders["exact"].events[0].extensions["priority"] == "high"

    samples = await scrape(conveyor)
    for kind in KINDS:
        left_out = sum(1 for _, passes in EVENTS if kind not in passes)
        assert value(samples, "conveyor_events_filtered_total", subscription=kind) == left_out
        assert (
            value(samples, "conveyor_deliveries_total", subscription=kind, outcome="filtered")
            == left_out
        )
    assert value(samples, "conveyor_events_filtered_total", subscription="everything") == 0


async def test_an_event_no_subscription_lets_through_is_filtered_everywhere_and_done(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = Recorder()
    conveyor = await start_conveyor(
        (filtered_subscription("eu", KINDS["prefix"], recorder),), admin_tokens=(("ops", TOKEN),)
    )
    response = await conveyor.post({"id": "us-1", "source": "/shop/us", "type": "order.created"})
    assert response.status == 202
    body = await status_of(conveyor, "us-1")
    assert body["state"] == "filtered"
    assert body["subscriptions"]["eu"]["state"] == "filtered"
    assert body["subscriptions"]["eu"]["finished_at"] is not None
    # Acked: nothing waits in the queue, nothing went to the dead-letter queue.
    assert await namespace.depth(namespace.topology.queue("eu")) == 0
    assert await namespace.depth(namespace.topology.dead_letter_queue("eu")) == 0
    assert recorder.ids() == []

    # The admin API shows the filters as they were written.
    listed = await conveyor.client.get(
        "/v1/admin/subscriptions", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert listed.status == 200
    [entry] = (await listed.json())["subscriptions"]
    assert entry["filters"] == KINDS["prefix"]
    assert entry["rate"] is None
    assert entry["events"] == ["order.#"]


async def test_the_topology_of_a_filtered_subscription_is_its_type_bindings() -> None:
    # Filters are checked by the consumer: the broker's bindings are the type patterns alone.
    plain = subscription("orders", ("order.#", "refund.*"), Recorder())
    filtered = dataclasses.replace(plain, filters=parse_filters(KINDS["issue"]))
    namespace = Namespace("plan", "amqp://unused")
    assert await plan_topology(namespace.topology, (filtered,)) == await plan_topology(
        namespace.topology, (plain,)
    )


async def test_an_ordered_subscription_filters_in_its_lanes(
    start_conveyor: StartConveyor, namespace: Namespace
) -> None:
    recorder = KeyedRecorder(max_sleep=0.0)
    sub = dataclasses.replace(
        ordered("ordered", recorder, retry=RetryPolicy(1, ()), partitions=2),
        filters=parse_filters([{"not": {"exact": {"partitionkey": "k1"}}}]),
    )
    conveyor = await start_conveyor((sub,))
    await publish_keys(conveyor, keys=3, per_key=5)
    for index in range(5):
        assert (await status_of(conveyor, f"k1-{index}"))["state"] == "filtered"
        assert (await status_of(conveyor, f"k0-{index}"))["state"] == "succeeded"
        assert (await status_of(conveyor, f"k2-{index}"))["state"] == "succeeded"
    assert set(recorder.handled) == {"k0", "k2"}
    assert order_violations(recorder.handled, 5) == []
    partitions = [namespace.topology.partition_queue("ordered", index) for index in range(2)]
    assert [await namespace.depth(queue) for queue in partitions] == [0, 0]


async def test_a_filtered_event_announces_no_completion(
    start_conveyor: StartConveyor, completions: ResultsProbe
) -> None:
    sub = dataclasses.replace(
        subscription("eu", ("order.*",), Recorder(), prefetch=1, concurrency=1, completions=True),
        filters=parse_filters(KINDS["prefix"]),
    )
    conveyor = await start_conveyor((sub,))
    for document in (
        {"type": "order.created", "id": "us-1", "source": "/shop/us"},
        {"type": "order.created", "id": "eu-1", "source": "/shop/eu"},
        {"type": "order.created", "id": "sentinel", "source": "/shop/eu"},
    ):
        assert (await conveyor.post(document)).status == 202
    # One delivery at a time: us-1 was settled (filtered) before the sentinel's completion.
    received = await completions.through("sentinel")
    assert [subject(message) for message in received] == ["eu-1"]
    assert (await status_of(conveyor, "us-1"))["subscriptions"]["eu"]["state"] == "filtered"
