"""Rate limits through the real broker: handler starts paced, nothing lost, across a reconnect."""

from __future__ import annotations

import asyncio
import dataclasses

from consumers import Event
from consumers.pacing import parse_rate
from consumers.retry import RetryPolicy
from consumers.subscription import Subscription
from service import Role
from tests.conftest import Running, StartConveyor, subscription, url_with_port
from tests.integration.test_metrics import scrape, value
from tests.support.ordering import KeyedRecorder, order_violations, ordered, publish_keys
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually


class Starts:
    """A handler that notes when each event's handler started (event-loop time)."""

    def __init__(self) -> None:
        self.at: list[tuple[float, str]] = []

    async def __call__(self, event: Event) -> None:
        self.at.append((asyncio.get_running_loop().time(), event.id))

    def ids(self) -> set[str]:
        return {event_id for _, event_id in self.at}

    def span(self) -> float:
        return self.at[-1][0] - self.at[0][0]


def paced(name: str, handler: Starts, rate: str, burst: int) -> Subscription:
    return dataclasses.replace(
        subscription(name, ("paced.*",), handler, prefetch=32, concurrency=16),
        rate=parse_rate(rate, burst),
    )


async def fill(ingress: Running, count: int) -> set[str]:
    """Post `count` events as one batch; their ids."""
    batch = [
        {"specversion": "1.0", "id": f"p{n}", "source": "/tests", "type": "paced.item"}
        for n in range(count)
    ]
    response = await ingress.post(batch, "application/cloudevents-batch+json")
    assert response.status == 202, await response.text()
    results = (await response.json())["results"]
    assert all("location" in result for result in results)
    assert len(results) == count
    return {event["id"] for event in batch}


async def test_two_hundred_events_at_fifty_a_second_take_at_least_three_point_eight_seconds(
    start_conveyor: StartConveyor,
) -> None:
    starts = Starts()
    sub = paced("paced", starts, "50/s", 10)
    # All 200 wait in the queue before a worker starts: only the limit can spread them.
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    accepted = await fill(ingress, 200)
    worker = await start_conveyor((sub,), role=Role.WORKER)
    waiting: list[float] = []

    async def all_started() -> bool:
        samples = await scrape(worker)
        waiting.append(value(samples, "conveyor_rate_limited_waiting", subscription="paced"))
        return starts.ids() >= accepted

    await eventually(all_started, timeout=60, what="every event's handler to start")
    assert starts.ids() == accepted  # none lost, nothing else
    # Deliveries waited for tokens, each in a handler slot: never more than the concurrency
    # (16), though the prefetch (32) let more in.
    assert 0 < max(waiting) <= 16
    # A burst of 10 at once, then 190 at 50 a second: 3.8 s (a little less for the clock's grain).
    assert starts.span() >= 3.8 - 0.05, starts.span()
    samples = await scrape(worker)
    assert value(samples, "conveyor_rate_limited_seconds_total", subscription="paced") > 0
    assert value(samples, "conveyor_rate_limited_waiting", subscription="paced") == 0


async def test_the_limit_holds_across_a_reconnect(
    start_conveyor: StartConveyor, amqp_url: str, proxy: FaultProxy
) -> None:
    starts = Starts()
    sub = paced("paced", starts, "50/s", 5)
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    accepted = await fill(ingress, 150)
    worker = await start_conveyor(
        (sub,), role=Role.WORKER, amqp_url_override=url_with_port(amqp_url, proxy.port)
    )

    async def some_started() -> bool:
        return len(starts.at) >= 40

    await eventually(some_started, timeout=30, what="40 handler starts")
    proxy.cut_all()  # deliveries held and waiting go back to the queue; conveyor reconnects
    cut_at = asyncio.get_running_loop().time()
    await worker.ready(timeout=20)

    async def all_started() -> bool:
        return starts.ids() >= accepted

    await eventually(all_started, timeout=60, what="every event's handler to start")
    assert starts.ids() == accepted  # none lost
    after = [at for at, _ in starts.at if at > cut_at]
    # The restored consumer is paced too: past at most one burst, 50 a second.
    assert len(after) > 60
    assert after[-1] - after[0] >= (len(after) - 5) / 50 - 0.05, (len(after), after[-1] - after[0])


async def test_an_ordered_subscription_is_paced_and_each_retry_takes_a_token(
    start_conveyor: StartConveyor,
) -> None:
    recorder = KeyedRecorder(max_sleep=0.0)
    recorder.fail_once.add(("k0", 3))
    times: list[float] = []

    async def timed(event: Event) -> None:
        times.append(asyncio.get_running_loop().time())
        await recorder(event)

    sub = dataclasses.replace(
        ordered("ordered", timed, retry=RetryPolicy(in_process=2, delays=()), partitions=2),
        rate=parse_rate("20/s", 1),
    )
    ingress = await start_conveyor((sub,), role=Role.INGRESS)
    await publish_keys(ingress, keys=2, per_key=10)
    await start_conveyor((sub,), role=Role.WORKER)

    async def all_handled() -> bool:
        return sum(len(seen) for seen in recorder.handled.values()) >= 20

    await eventually(all_handled, timeout=30, what="20 ordered events handled")
    assert order_violations(recorder.handled, 10) == []
    # 20 events and one retry: 21 handler starts, one at once and 20 at 20 a second.
    assert len(times) == 21
    assert times[-1] - times[0] >= 20 / 20 - 0.05, times[-1] - times[0]
