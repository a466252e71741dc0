"""Schedules in one process on SQLite: across a 5 s stop, `missed` decides which ticks of the
stop fire; the admin API and `conveyor schedules` show each schedule's last and next tick and
its last event's state."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from consumers import Event
from service import Role
from service.schedules import Schedule, load_schedules
from tests.conftest import StartConveyor, subscription, url_with_port
from tests.support.cli import run_cli
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually

TOKEN = "schedules-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICIES = ("skip", "last", "all")
STOP_SECONDS = 5.0


def every_second(tmp_path: Path) -> tuple[Schedule, ...]:
    tables = "".join(
        f'[[schedules]]\nname = "{policy}"\nevery = "1s"\ntype = "tick.{policy}"\n'
        f'missed = "{policy}"\n'
        for policy in POLICIES
    )
    path = tmp_path / "schedules.toml"
    path.write_text(tables)
    return load_schedules(path)


def tick_of(event_id: str) -> float:
    """The tick time in an event id `{name}:{time}`."""
    return datetime.fromisoformat(event_id.split(":", 1)[1]).timestamp()


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def listing(conveyor: Any) -> dict[str, dict[str, Any]]:
    response = await conveyor.client.get("/v1/admin/schedules", headers=ADMIN)
    assert response.status == 200, await response.text()
    return {entry["name"]: entry for entry in (await response.json())["schedules"]}


async def test_missed_policies_across_a_five_second_stop(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    received: list[str] = []

    async def note(event: Event) -> None:
        received.append(event.id)

    # One at a time, in queue order, and no consumer-side dedup: a second copy would show.
    ticks = replace(
        subscription("ticks", ("tick.*",), note, prefetch=1, concurrency=1), deduplicate=False
    )
    schedules = every_second(tmp_path)
    options: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path}/schedules.db",
        "admin_tokens": (("ops", TOKEN),),
        "schedules": schedules,
    }

    def ticks_of(policy: str) -> list[float]:
        return [tick_of(i) for i in received if i.startswith(f"{policy}:")]

    first = await start_conveyor((ticks,), **options)

    async def two_each() -> bool:
        return all(len(ticks_of(policy)) >= 2 for policy in POLICIES)

    await eventually(two_each, timeout=20, what="two ticks of each schedule")
    await first.client.close()
    stopped_at = time.time()
    await asyncio.sleep(STOP_SECONDS)  # the stop under test, not a wait for an outcome
    second = await start_conveyor((ticks,), **options)

    started: dict[str, float] = {}

    async def running() -> bool:
        for name, entry in (await listing(second)).items():
            if entry["running_here_since"] is not None:
                started[name] = seconds(entry["running_here_since"])
        return len(started) == len(POLICIES)

    await eventually(running, timeout=10, what="the schedules running again")

    async def three_more_each() -> bool:
        return all(max(ticks_of(p)) >= started[p] + 3 for p in POLICIES)

    await eventually(three_more_each, timeout=30, what="three ticks after the restart")
    # Handled one at a time in queue order: every copy published so far has been handled.
    assert [i for i, count in Counter(received).items() if count > 1] == []
    entries = await listing(second)
    for policy in POLICIES:
        fired = ticks_of(policy)
        last_before = max(tick for tick in fired if tick <= stopped_at)
        # The ticks that fell into the stop: after the last one fired, up to the restart.
        fell = [float(t) for t in range(int(last_before) + 1, math.floor(started[policy]) + 1)]
        assert len(fell) >= STOP_SECONDS - 1
        fired_of_stop = [tick for tick in fired if last_before < tick <= started[policy]]
        expected = {"skip": [], "last": fell[-1:], "all": fell}[policy]
        assert fired_of_stop == expected, policy
        assert entries[policy]["skipped_here"] == len(fell) - len(expected)
        # Before the stop and after the restart, no tick was left out.
        on_time = [tick for tick in fired if tick > started[policy]]
        assert on_time == [float(t) for t in range(int(on_time[0]), int(on_time[-1]) + 1)]
        before = [tick for tick in fired if tick <= last_before]
        assert before == [float(t) for t in range(int(before[0]), int(last_before) + 1)]


async def test_admin_api_and_cli_list_last_and_next_ticks(
    start_conveyor: StartConveyor, tmp_path: Path
) -> None:
    done: list[str] = []

    async def note(event: Event) -> None:
        done.append(event.id)

    path = tmp_path / "schedules.toml"
    path.write_text(
        '[[schedules]]\nname = "pulse"\nevery = "1s"\ntype = "tick.pulse"\n'
        '[[schedules]]\nname = "nightly"\ncron = "0 2 * * *"\ntimezone = "Europe/Berlin"\n'
        'type = "billing.reconcile"\ndata = { scope = "all" }\n'
    )
    conveyor = await start_conveyor(
        (subscription("pulses", ("tick.*",), note),),
        admin_tokens=(("ops", TOKEN),),
        schedules=load_schedules(path),
    )

    async def a_tick_succeeded() -> bool:
        pulse = (await listing(conveyor))["pulse"]
        return (pulse["last_event"] or {}).get("state") == "succeeded"

    await eventually(a_tick_succeeded, timeout=20, what="a pulse tick's event to succeed")
    entries = await listing(conveyor)
    pulse, nightly = entries["pulse"], entries["nightly"]
    assert pulse["last_event"]["id"] == f"pulse:{pulse['last_tick']}"
    assert pulse["last_event"]["id"] in done
    assert seconds(pulse["next_tick"]) > seconds(pulse["last_tick"])
    assert pulse["every"] == "1s"
    assert pulse["source"] == "/conveyor/schedules/pulse"
    assert nightly["last_tick"] is None
    assert nightly["last_event"] is None
    assert nightly["cron"] == "0 2 * * *"
    assert nightly["timezone"] == "Europe/Berlin"
    # 02:00 in Berlin is 01:00 UTC in winter, 00:00 in summer.
    assert nightly["next_tick"].endswith(("T01:00:00Z", "T00:00:00Z"))

    # The tick's status is the event's status.
    response = await conveyor.client.get(f"/v1/events/{pulse['last_event']['id']}")
    assert response.status == 200
    assert (await response.json())["source"] == "/conveyor/schedules/pulse"

    result = await run_cli(conveyor, "schedules", "--token", TOKEN)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "WHEN",
        "TYPE",
        "LAST",
        "TICK",
        "ITS",
        "EVENT",
        "NEXT",
        "TICK",
    ]
    pulse_line = next(line for line in lines if line.startswith("pulse"))
    assert "every 1s" in pulse_line
    assert "succeeded" in pulse_line
    nightly_line = next(line for line in lines if line.startswith("nightly"))
    assert "0 2 * * * (Europe/Berlin)" in nightly_line
    assert "never" in nightly_line

    refused = await conveyor.client.get("/v1/admin/schedules")
    assert refused.status == 401


async def test_ticks_that_cannot_be_published_go_out_once_the_broker_is_back(
    start_conveyor: StartConveyor, proxy: FaultProxy, amqp_url: str, tmp_path: Path
) -> None:
    received: list[str] = []

    async def note(event: Event) -> None:
        received.append(event.id)

    ticks = replace(
        subscription("ticks", ("tick.*",), note, prefetch=1, concurrency=1), deduplicate=False
    )
    # The handler's process reaches the broker directly; only the schedule's goes through the
    # proxy, so the outage is the publisher's alone.
    await start_conveyor((ticks,), role=Role.WORKER)
    path = tmp_path / "schedules.toml"
    path.write_text('[[schedules]]\nname = "pulse"\nevery = "1s"\ntype = "tick.pulse"\n')
    ingress = await start_conveyor(
        (ticks,),
        role=Role.INGRESS,
        amqp_url_override=url_with_port(amqp_url, proxy.port),
        publish_timeout=1.0,
        admin_tokens=(("ops", TOKEN),),
        schedules=load_schedules(path),
    )

    def fired() -> list[float]:
        return sorted(tick_of(i) for i in received)

    async def ticking() -> bool:
        return len(fired()) >= 2

    await eventually(ticking, timeout=20, what="two ticks before the outage")
    proxy.accepting = False
    proxy.cut_all()
    cut_at = time.time()

    async def failing_for_three_seconds() -> bool:
        pulse = (await listing(ingress))["pulse"]
        return pulse["failing_here"] is not None and time.time() > cut_at + 3

    await eventually(failing_for_three_seconds, timeout=20, what="ticks failing in the outage")
    proxy.accepting = True
    back_at = time.time()

    async def caught_up() -> bool:
        return bool(received) and fired()[-1] >= back_at + 2

    await eventually(caught_up, timeout=30, what="ticks after the outage")
    # A set: a publish cut between the message and its confirm is retried and may go out twice
    # (as any client's retry after a 503 would); consumer-side dedup is what absorbs that.
    ticks_seen = sorted(set(fired()))
    # Every tick of the outage went out after it: none is missing.
    assert ticks_seen == [float(t) for t in range(int(ticks_seen[0]), int(ticks_seen[-1]) + 1)]
    assert sum(1 for tick in ticks_seen if cut_at < tick < back_at) >= 3
    assert (await listing(ingress))["pulse"]["failing_here"] is None
