"""A schedule fired by three `conveyor serve` processes on one PostgreSQL store: one event per
tick, none missing, none twice, also after one of them is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson

from consumers import Event
from service import Role
from tests.conftest import StartConveyor, subscription
from tests.support.namespace import Namespace
from tests.support.processes import Process
from tests.support.waiting import eventually

# The ingress processes declare the queue the test's worker consumes, so no tick waits on it.
CONFIG = """
[[subscriptions]]
name = "ticks"
events = ["tick.*"]
handler = "consumers.builtin:discard"
prefetch = 1
concurrency = 1
deduplicate = false
retry = { in_process = 1, delays = [] }

[[schedules]]
name = "pulse"
every = "1s"
type = "tick.pulse"
"""
SECONDS_EACH_PHASE = 6


def tick_of(event_id: str) -> float:
    return datetime.fromisoformat(event_id.split(":", 1)[1]).timestamp()


async def scheduled_copies(process: Process) -> float:
    """Ticks this process published or found published already (its ingress counters)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(process.base / "metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("conveyor_events_accepted_total", "conveyor_events_deduplicated_total"):
            total += float(value)
    return total


async def test_three_replicas_fire_each_tick_once_also_after_one_is_killed(
    launch: Callable[..., Awaitable[Process]],
    start_conveyor: StartConveyor,
    namespace: Namespace,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    received: list[str] = []

    async def note(event: Event) -> None:
        received.append(event.id)

    # This process consumes (one at a time, in queue order, no consumer-side dedup: a second
    # copy of a tick would be handled twice); the three replicas only run the ingress, so a
    # killed one takes no delivery with it.
    ticks = replace(
        subscription("ticks", ("tick.*",), note, prefetch=1, concurrency=1), deduplicate=False
    )
    await start_conveyor((ticks,), role=Role.WORKER, store_url=postgres_url)
    config = tmp_path / "replicas.toml"
    config.write_text(CONFIG)
    environment = {"CONVEYOR_CONFIG": str(config), "CONVEYOR_STORE_URL": postgres_url}
    replicas = await asyncio.gather(
        *(launch(flags=("--role", "ingress"), **environment) for _ in range(3))
    )

    def newest_tick() -> float:
        return max((tick_of(i) for i in received if i.startswith("pulse:")), default=0.0)

    async def reached(moment: float) -> bool:
        return newest_tick() >= moment

    all_up = time.time()
    await eventually(
        lambda: reached(all_up + SECONDS_EACH_PHASE), timeout=60, what="ticks with three up"
    )
    victim, *survivors = replicas
    os.kill(victim.popen.pid, signal.SIGKILL)
    killed_at = time.time()
    copies_at_kill = [await scheduled_copies(process) for process in survivors]
    await eventually(
        lambda: reached(killed_at + SECONDS_EACH_PHASE), timeout=60, what="ticks with two up"
    )
    copies_at_end = [await scheduled_copies(process) for process in survivors]
    for process in survivors:
        process.popen.send_signal(signal.SIGTERM)
        assert await process.exited(timeout=30) == 0

    # A sentinel behind everything the replicas published: once it is handled, so is the rest.
    sentinel = {"specversion": "1.0", "id": "sentinel", "source": "/tests", "type": "tick.end"}
    await namespace.publish_raw(
        orjson.dumps(sentinel),
        routing_key="tick.end",
        content_type="application/cloudevents+json",
    )

    async def sentinel_handled() -> bool:
        return "sentinel" in received

    await eventually(sentinel_handled, timeout=30, what="the sentinel to be handled")
    pulses = [i for i in received if i.startswith("pulse:")]
    assert [i for i, count in Counter(pulses).items() if count > 1] == []
    fired = sorted(tick_of(i) for i in pulses)
    assert fired == [float(t) for t in range(int(fired[0]), int(fired[-1]) + 1)]
    # The run spans both phases: three replicas, then two.
    assert fired[0] < killed_at - 1
    assert fired[-1] >= killed_at + SECONDS_EACH_PHASE
    # Both survivors kept running the schedule after the kill: each published every tick or
    # found it published by the other (a replica may be a tick behind when its counters are read).
    for before, after in zip(copies_at_kill, copies_at_end, strict=True):
        assert after - before >= SECONDS_EACH_PHASE - 2
