"""A handler that blocks the event loop: the lag is measured and pinned on it, and publishes
RabbitMQ confirmed meanwhile are accepted, not called timed out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from structlog.testing import capture_logs

from consumers import Event
from service.app_keys import METRICS
from tests.conftest import Running, StartConveyor, subscription
from tests.integration.test_metrics import scrape, value
from tests.support.waiting import eventually

STALL_WARNING = (
    "event loop stalled: a handler ran without awaiting (blocking code in an async handler "
    "holds every request and delivery of the process)"
)


def _in_flight(conveyor: Running) -> float:
    registry = conveyor.client.app[METRICS].registry
    return registry.get_sample_value("conveyor_publishes_in_flight") or 0.0


async def test_a_handler_blocking_the_loop_shows_in_the_lag_metric_and_a_warning_names_it(
    start_conveyor: StartConveyor,
) -> None:
    blocked = asyncio.Event()

    async def blocking(event: Event) -> None:
        if event.type == "lag.block":
            time.sleep(0.8)  # noqa: ASYNC251 - the fault under test: a handler blocking the loop
            blocked.set()

    async def quiet(_event: Event) -> None:
        return None

    conveyor = await start_conveyor(
        (
            subscription("stall", ("lag.block",), blocking),
            subscription("calm", ("lag.calm",), quiet),
        ),
        loop_lag_warning=0.4,
    )
    with capture_logs() as logs:
        for event_type in ("lag.calm", "lag.block"):
            response = await conveyor.post({"type": event_type, "id": event_type, "source": "/t"})
            assert response.status == 202
        await asyncio.wait_for(blocked.wait(), timeout=10)

        async def lag_seen() -> bool:
            samples = await scrape(conveyor)
            stalls = value(samples, "conveyor_event_loop_lag_seconds_count") - value(
                samples, "conveyor_event_loop_lag_seconds_bucket", le="0.5"
            )
            return stalls >= 1

        await eventually(lag_seen, what="a tick of the lag monitor later than 0.5 s")

        async def warned() -> bool:
            return any(line["event"] == STALL_WARNING for line in logs)

        await eventually(warned, what="the stall warning")
    warnings = [line for line in logs if line["event"] == STALL_WARNING]
    assert len(warnings) == 1
    assert warnings[0]["subscription"] == "stall"
    assert warnings[0]["handler"] == "tests:stall"
    assert warnings[0]["lag_seconds"] >= 0.4
    assert warnings[0]["step_seconds"] >= 0.8


async def test_a_publish_confirmed_while_a_handler_blocked_the_loop_is_accepted(
    start_conveyor: StartConveyor,
) -> None:
    """The publish timeout fires late, when the loop is back, with the confirm read or about to
    be: the event is accepted, and nothing is logged or counted as a publish timeout."""
    done = asyncio.Event()
    answered = asyncio.Event()
    conveyor: Running | None = None

    async def blocking(event: Event) -> None:
        if event.type != "lag.block":
            return
        assert conveyor is not None
        # Block only once a load publish is waiting for its confirm, so its deadline passes
        # meanwhile (this event's own publish may still count until its answer is out).
        await answered.wait()
        while _in_flight(conveyor) < 1:  # noqa: ASYNC110 - a gauge has no event to wait on
            await asyncio.sleep(0.001)
        # Longer than the publish timeout (a second, which a loaded machine's own latency does
        # not reach), shorter than the store timeout (2 s), which does not stretch for a stall.
        time.sleep(1.5)  # noqa: ASYNC251 - the fault under test: a handler blocking the loop
        done.set()

    conveyor = await start_conveyor(
        (subscription("stall", ("lag.block",), blocking),), publish_timeout=1.0
    )
    answers: list[int] = []

    async def keep_posting(lane: int) -> None:
        number = 0
        while not done.is_set():
            document: dict[str, Any] = {"type": "lag.load", "source": "/t"}
            document["id"] = f"{lane}-{number}"
            answers.append((await conveyor.post(document)).status)
            number += 1

    with capture_logs() as logs:
        response = await conveyor.post({"type": "lag.block", "id": "block", "source": "/t"})
        assert response.status == 202
        answered.set()
        await asyncio.wait_for(
            asyncio.gather(*(keep_posting(lane) for lane in range(8))), timeout=30
        )
    assert answers
    assert set(answers) == {202}, answers
    timeouts = [line for line in logs if line.get("reason") == "publish-timeout"]
    assert timeouts == []
    samples = await scrape(conveyor)
    assert value(samples, "conveyor_publish_confirm_seconds_count", outcome="timeout") == 0
    assert value(samples, "conveyor_events_accepted_total") == len(answers) + 1
