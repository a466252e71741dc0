"""The lag monitor's arithmetic and whom it blames, on a clock the test moves."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from consumers import Event
from consumers.watch import HandlerSteps, WatchedHandler
from service.observability.loop_lag import LoopLagMonitor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.stalls: list[float] = []  # how much longer than asked each sleep takes

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + (self.stalls.pop(0) if self.stalls else 0.0)


def _monitor(clock: FakeClock, steps: HandlerSteps, seen: list[float]) -> LoopLagMonitor:
    return LoopLagMonitor(
        steps=steps,
        observe=seen.append,
        warn_after=0.5,
        interval=0.1,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_lag_is_the_time_past_the_interval_and_only_a_stall_warns() -> None:
    clock = FakeClock()
    clock.stalls = [0.0, 0.2, 2.0]
    seen: list[float] = []
    monitor = _monitor(clock, HandlerSteps(clock), seen)
    with capture_logs() as logs:
        for _ in range(3):
            await monitor.tick()
    assert [round(lag, 6) for lag in seen] == [0.0, 0.2, 2.0]
    assert [line["event"] for line in logs] == [
        "event loop stalled, not in a handler (CPU starvation, or blocking code elsewhere)"
    ]
    assert logs[0]["lag_seconds"] == 2.0


async def test_the_warning_names_the_handler_whose_step_held_the_loop() -> None:
    clock = FakeClock()
    steps = HandlerSteps(clock)
    seen: list[float] = []

    async def blocking(_event: Event) -> None:
        clock.now += 1.5  # a step that takes 1.5 s of the clock without awaiting
        await asyncio.sleep(0)
        clock.now += 0.01

    watched = WatchedHandler("orders", "shop.handlers:blocking", blocking, steps)
    steps.note("other", "shop.handlers:quick", 0.02)
    await watched(Event(id="e", source="/s", type="t", specversion="1.0"))
    clock.stalls = [1.5]
    with capture_logs() as logs:
        await _monitor(clock, steps, seen).tick()
    assert len(logs) == 1
    assert logs[0]["subscription"] == "orders"
    assert logs[0]["handler"] == "shop.handlers:blocking"
    assert logs[0]["step_seconds"] == 1.5
    assert steps.take_longest() is None  # taken by the tick: the next stall starts afresh


async def test_a_watched_handler_passes_on_cancellation_and_errors() -> None:
    steps = HandlerSteps(time.perf_counter)
    started = asyncio.Event()
    seen: list[str] = []

    async def waits(_event: Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def fails(_event: Event) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    event = Event(id="e", source="/s", type="t", specversion="1.0")
    task = asyncio.ensure_future(WatchedHandler("s", "m:waits", waits, steps)(event))
    await started.wait()
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()
    assert seen == ["cancelled"]
    try:
        await WatchedHandler("s", "m:fails", fails, steps)(event)
    except ValueError as error:
        assert str(error) == "bad"  # noqa: PT017 - the error must come through unchanged
    else:
        raise AssertionError("the handler's error was swallowed")
