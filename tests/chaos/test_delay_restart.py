"""Delayed events survive a restart of RabbitMQ: the delay chain's quorum queues keep them, and
the hops between levels lose none (at-least-once dead-lettering)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from producers.event import format_time
from tests.chaos.test_scenarios import rabbitmqctl
from tests.conftest import StartConveyor, subscription
from tests.integration.test_delayed_delivery import EARLY, Arrivals

EVENTS = 40
# Due around and after the outage: some mid-hop while the broker is away, some still waiting.
SPREAD_SECONDS = 12


async def test_delayed_events_survive_a_broker_restart(start_conveyor: StartConveyor) -> None:
    arrivals = Arrivals()
    conveyor = await start_conveyor(
        (subscription("later", ("remind.*",), arrivals, prefetch=32, concurrency=16),),
        max_delay=3600.0,
    )
    now = time.time()
    due = {f"due-{index}": now + 2 + index * SPREAD_SECONDS / EVENTS for index in range(EVENTS)}
    for event_id, moment in due.items():
        response = await conveyor.client.post(
            "/v1/events",
            json={
                "type": "remind.me",
                "id": event_id,
                "source": "/chaos",
                "deliverat": format_time(datetime.fromtimestamp(moment, UTC)),
            },
        )
        assert response.status == 202, await response.text()

    await asyncio.sleep(3.0)  # a few are due and handled; the rest wait at various levels
    await rabbitmqctl("stop_app")
    await asyncio.sleep(3.0)
    await rabbitmqctl("start_app")
    await conveyor.ready(timeout=60)

    await arrivals.recorder.wait_for(EVENTS, timeout=120)

    # None lost (a repeat after the outage is allowed: at least once), none early.
    assert set(arrivals.recorder.ids()) == set(due)
    for event_id, moment in due.items():
        assert arrivals.at[event_id] >= moment - EARLY, event_id
