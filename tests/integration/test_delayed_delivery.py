"""Delayed delivery: events with `deliverat` (or `Conveyor-Delay`) wait in the broker's delay
chain and reach their handlers when due, in due order; cancelled ones never do."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from consumers import Event
from consumers.ordering import Ordering
from producers import EventClient
from producers.event import format_time
from service.cli.client import EXIT_ANSWERED_ERROR
from service.settings import Role
from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_cli_client import conveyor_cli
from tests.integration.test_metrics import scrape, value
from tests.support.namespace import Namespace
from tests.support.recorder import Recorder
from tests.support.waiting import eventually

# 12 levels (delays up to 68 minutes): enough for every test here, and few queues to declare.
MAX_DELAY = 3600.0
# The chain rounds a delay to the nearest whole second: an event may come this much early.
EARLY = 0.5
# How late an event may come on this loaded, shared machine and still pass: generous, since
# the point is that it is about a second, not that the machine is fast.
LATE = 5.0


class Arrivals:
    """A handler that notes when each event reached it (wall clock, as `deliverat` is)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.recorder = Recorder()

    async def __call__(self, event: Event) -> None:
        self.at.setdefault(event.id, time.time())
        await self.recorder(event)


def at(moment: float) -> str:
    return format_time(datetime.fromtimestamp(moment, UTC))


def delayed(event_id: str, due: float, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": "remind.me",
        "id": event_id,
        "source": "/tests",
        "deliverat": at(due),
    } | extra


async def accept(conveyor: Running, document: dict[str, Any], **headers: str) -> str:
    response = await conveyor.client.post(
        "/v1/events",
        json=document,
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status == 202, await response.text()
    return str(response.headers["Location"])


async def test_delays_of_0_1_3_and_7_s_arrive_in_due_order_about_when_due(
    start_conveyor: StartConveyor,
) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    now = time.time()
    # Posted furthest first: the order they arrive in is the chain's, not the posting's.
    due = {f"d{seconds}-{uuid.uuid4().hex[:6]}": now + seconds for seconds in (7, 3, 1, 0)}
    locations = {
        event_id: await accept(conveyor, delayed(event_id, moment))
        for event_id, moment in due.items()
    }
    furthest = next(iter(due))
    _, scheduled = await conveyor.status(locations[furthest])
    assert (scheduled["state"], scheduled["done"]) == ("scheduled", False)
    assert scheduled["due"] == at(due[furthest])

    await arrivals.recorder.wait_for(4, timeout=30)

    assert arrivals.recorder.ids() == sorted(due, key=due.__getitem__)
    for event_id, moment in due.items():
        assert moment - EARLY <= arrivals.at[event_id] <= moment + LATE, (event_id, moment)
    _, done = await conveyor.status(locations[furthest], wait="10s")
    assert done["subscriptions"]["later"]["state"] == "succeeded"
    assert done["due"] == at(due[furthest])
    samples = await scrape(conveyor)
    # The one due now went straight to the events exchange.
    assert value(samples, "conveyor_delayed_events_total", outcome="scheduled") == 3
    assert value(samples, "conveyor_delayed_events_total", outcome="released") == 3
    assert value(samples, "conveyor_delayed_lateness_seconds_count") == 3


async def test_an_event_due_in_10_minutes_does_not_hold_back_one_due_in_1_s(
    start_conveyor: StartConveyor,
) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    now = time.time()
    # The far one in binary mode: `ce-deliverat`.
    response = await conveyor.client.post(
        "/v1/events",
        data=b"{}",
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "far",
            "ce-source": "/tests",
            "ce-type": "remind.me",
            "ce-deliverat": at(now + 600),
        },
    )
    assert response.status == 202, await response.text()
    far = response.headers["Location"]
    await accept(conveyor, delayed("near", now + 1))

    await arrivals.recorder.wait_for(1, timeout=20)

    assert arrivals.recorder.ids() == ["near"]
    assert arrivals.at["near"] <= now + 1 + LATE
    _, status = await conveyor.status(far)
    assert (status["state"], status["due"]) == ("scheduled", at(now + 600))


async def test_conveyor_delay_header_sets_deliverat(start_conveyor: StartConveyor) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    sent = time.time()
    document = {"type": "remind.me", "id": "header", "source": "/tests"}
    location = await accept(conveyor, document, **{"Conveyor-Delay": "2s"})
    _, scheduled = await conveyor.status(location)
    assert scheduled["state"] == "scheduled"

    [event] = await arrivals.recorder.wait_for(1, timeout=20)

    deliverat = datetime.fromisoformat(event.extensions["deliverat"]).timestamp()
    assert sent + 2 - EARLY <= deliverat <= time.time()
    assert arrivals.at["header"] >= sent + 2 - EARLY


async def test_a_delayed_event_survives_a_restart_of_conveyor(
    start_conveyor: StartConveyor, store_url: str
) -> None:
    arrivals = Arrivals()
    sub = subscription("later", ("remind.*",), arrivals)
    first = await start_conveyor((sub,), max_delay=MAX_DELAY, store_url=store_url)
    due = time.time() + 4
    location = await accept(first, delayed("survivor", due))
    await first.client.close()  # nothing of the event is left in this process

    second = await start_conveyor((sub,), max_delay=MAX_DELAY, store_url=store_url)
    await arrivals.recorder.wait_for(1, timeout=30)

    assert arrivals.recorder.ids() == ["survivor"]
    assert arrivals.at["survivor"] >= due - EARLY
    _, status = await second.status(location, wait="10s")
    assert status["subscriptions"]["later"]["state"] == "succeeded"


async def test_a_cancelled_event_never_reaches_its_handler(
    start_conveyor: StartConveyor, namespace: Namespace, store_url: str
) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY, store_url=store_url
    )
    now = time.time()
    cancelled = await accept(conveyor, delayed("cancel-me", now + 2))
    await accept(conveyor, delayed("after-it", now + 3))

    response = await conveyor.client.delete(cancelled)
    assert response.status == 200, await response.text()
    assert (await response.json())["state"] == "cancelled"
    again = await conveyor.client.delete(cancelled)
    assert again.status == 200  # cancelling twice says the same

    async def came_due() -> bool:
        samples = await scrape(conveyor)
        return value(samples, "conveyor_delayed_events_total", outcome="cancelled") == 1

    await eventually(came_due, timeout=30, what="the cancelled event to come due")
    await arrivals.recorder.wait_for(1, timeout=30)
    assert arrivals.recorder.ids() == ["after-it"]
    _, status = await conveyor.status(cancelled)
    assert (status["state"], status["done"], status["subscriptions"]) == ("cancelled", True, {})
    # Acked in the due queue, not left anywhere.
    assert await namespace.depth(f"{namespace.name}.due") == 0
    assert await namespace.depth(namespace.topology.unrouted) == 0


async def test_cancelling_an_event_already_due_is_a_conflict(
    start_conveyor: StartConveyor,
) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    location = await accept(conveyor, delayed("too-late", time.time() + 1))
    now_location = await accept(
        conveyor, {"type": "remind.me", "id": "never-delayed", "source": "/tests"}
    )
    await arrivals.recorder.wait_for(2, timeout=20)

    for already in (location, now_location):
        response = await conveyor.client.delete(already)
        assert response.status == 409
        problem = await response.json(content_type=None)
        assert problem["type"].endswith("event-already-due")
    missing = await conveyor.client.delete("/v1/events/no-such-event")
    assert missing.status == 404


async def test_cancel_is_authorized_as_the_status_api_is(start_conveyor: StartConveyor) -> None:
    conveyor = await start_conveyor(
        role=Role.INGRESS,
        api_keys=frozenset({"s3cret"}),
        admin_tokens=(("ops", "admin-token-0123456789"),),
        max_delay=MAX_DELAY,
    )
    response = await conveyor.client.post(
        "/v1/events",
        json=delayed("guarded", time.time() + 600),
        headers={"Authorization": "Bearer s3cret"},
    )
    assert response.status == 202

    anonymous = await conveyor.client.delete("/v1/events/guarded")
    assert anonymous.status == 401
    admin = await conveyor.client.delete(
        "/v1/events/guarded", headers={"Authorization": "Bearer admin-token-0123456789"}
    )
    assert admin.status == 200


async def test_an_amqp_publisher_with_ce_deliverat_is_held_until_due(
    start_conveyor: StartConveyor, amqp_url: str, namespace: Namespace
) -> None:
    arrivals = Arrivals()
    await start_conveyor((subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY)
    due = time.time() + 3
    async with EventClient(amqp_url, namespace=namespace.name) as client:
        await client.send(
            "remind.me",
            {"n": 1},
            source="/amqp",
            id="amqp-later",
            extensions={"deliverat": at(due)},
        )
        await client.send("remind.me", {"n": 2}, source="/amqp", id="amqp-now")

    await arrivals.recorder.wait_for(2, timeout=30)

    assert arrivals.recorder.ids() == ["amqp-now", "amqp-later"]
    assert arrivals.at["amqp-later"] >= due - EARLY
    assert arrivals.at["amqp-later"] <= due + LATE
    [later] = [event for event in arrivals.recorder.events if event.id == "amqp-later"]
    assert later.data == {"n": 1}
    assert later.attempt == 1


async def test_invalid_and_too_far_deliverat_are_refused_naming_the_attribute(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS, max_delay=MAX_DELAY)
    cases = [
        ({"deliverat": "tomorrow"}, {}),
        ({"deliverat": "2026-13-01T00:00:00Z"}, {}),
        ({"deliverat": at(time.time() + MAX_DELAY + 60)}, {}),
        ({}, {"Conveyor-Delay": "soon"}),
        ({}, {"Conveyor-Delay": "2h"}),
    ]
    for extra, headers in cases:
        document = {"type": "remind.me", "id": "bad", "source": "/tests"} | extra
        response = await conveyor.client.post(
            "/v1/events",
            json=document,
            headers={"Content-Type": "application/json", **headers},
        )
        problem = await response.json(content_type=None)
        assert response.status == 400, (extra, headers)
        assert problem["type"].endswith("invalid-event")
        assert problem["attribute"] == "deliverat", problem

    # In a batch, the entry alone is refused.
    response = await conveyor.client.post(
        "/v1/events",
        json=[
            {"specversion": "1.0", "type": "remind.me", "id": "ok", "source": "/tests"},
            {
                "specversion": "1.0",
                "type": "remind.me",
                "id": "far",
                "source": "/t",
                "deliverat": "x",
            },
        ],
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status == 207
    results = (await response.json())["results"]
    assert results[0]["id"] == "ok"
    assert results[1]["error"]["attribute"] == "deliverat"


async def test_a_deliverat_in_the_past_means_now(start_conveyor: StartConveyor) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    location = await accept(conveyor, delayed("past", time.time() - 3600))

    await arrivals.recorder.wait_for(1, timeout=10)
    _, status = await conveyor.status(location, wait="10s")
    assert status["state"] == "succeeded"
    assert "due" not in status


async def test_delayed_delivery_off_refuses_a_future_deliverat(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS, max_delay=0.0)
    response = await conveyor.client.post(
        "/v1/events",
        json=delayed("off", time.time() + 60),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json(content_type=None))["attribute"] == "deliverat"


async def test_a_batch_mixes_delayed_and_immediate_events(start_conveyor: StartConveyor) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals),), max_delay=MAX_DELAY
    )
    due = time.time() + 2
    response = await conveyor.client.post(
        "/v1/events",
        json=[
            delayed("batch-later", due),
            {"specversion": "1.0", "type": "remind.me", "id": "batch-now", "source": "/t"},
        ],
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status == 202, await response.text()

    await arrivals.recorder.wait_for(2, timeout=20)
    assert arrivals.recorder.ids() == ["batch-now", "batch-later"]
    assert arrivals.at["batch-later"] >= due - EARLY


async def test_conveyor_cancel_and_status_on_the_command_line(
    start_conveyor: StartConveyor,
) -> None:
    conveyor = await start_conveyor(role=Role.INGRESS, max_delay=MAX_DELAY)
    due = time.time() + 600
    await accept(conveyor, delayed("cli-later", due))

    code, text = await conveyor_cli(conveyor, "status", "cli-later")
    assert code == 0
    assert text.splitlines()[0] == (
        f"cli-later (source /tests, type remind.me): scheduled, not done yet, due {at(due)}"
    )
    code, text = await conveyor_cli(conveyor, "cancel", "cli-later")
    assert (code, text) == (0, "cli-later (source /tests): cancelled\n")
    code, text = await conveyor_cli(conveyor, "status", "cli-later")
    assert (
        text.splitlines()[0]
        == f"cli-later (source /tests, type remind.me): cancelled, due {at(due)}"
    )
    code, _ = await conveyor_cli(conveyor, "cancel", "no-such-event")
    assert code == EXIT_ANSWERED_ERROR


async def test_an_ordered_subscription_gets_an_amqp_event_back_in_its_keys_partition(
    start_conveyor: StartConveyor, amqp_url: str, namespace: Namespace
) -> None:
    arrivals = Arrivals()
    plain = subscription("orderly", ("remind.*",), arrivals)
    sub = dataclasses.replace(plain, ordering=Ordering("partitionkey", 2))
    await start_conveyor((sub,), max_delay=MAX_DELAY)
    due = time.time() + 2
    async with EventClient(amqp_url, namespace=namespace.name) as client:
        await client.send(
            "remind.me",
            source="/amqp",
            id="ordered-later",
            extensions={"deliverat": at(due), "partitionkey": "k1"},
        )

    [event] = await arrivals.recorder.wait_for(1, timeout=30)

    assert event.id == "ordered-later"
    assert arrivals.at["ordered-later"] >= due - EARLY
    partitions = [namespace.topology.partition_queue("orderly", index) for index in range(2)]
    assert [await namespace.depth(queue) for queue in partitions] == [0, 0]
    assert await namespace.depth(namespace.topology.unrouted) == 0
