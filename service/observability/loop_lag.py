"""How late the event loop runs: a timer every tick, its lateness measured and exported.

A coroutine that does not await (a handler calling `time.sleep`, a long computation) holds the
whole process: requests, deliveries, confirms and timers wait behind it. Nothing else shows it,
so a small task measures how late its own timer fires, into the conveyor_event_loop_lag_seconds
histogram, and a stall past CONVEYOR_LOOP_LAG_WARNING is logged with the handler step that held
the loop, when a handler's did (consumers.watch times each step).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from consumers.watch import HandlerSteps, LongStep
from service.cancellation import STOP_SECONDS, stop_task

__all__ = ["LoopLagMonitor", "loop_lag_context"]

_log = structlog.get_logger(component="loop")
TICK_SECONDS = 0.1


class LoopLagMonitor:
    """Each tick sleeps `interval` and reports how much longer than that it took."""

    def __init__(
        self,
        *,
        steps: HandlerSteps,
        observe: Callable[[float], None],
        warn_after: float,
        interval: float = TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._steps = steps
        self._observe = observe
        self._warn_after = warn_after
        self._interval = interval
        self._clock = clock
        self._sleep = sleep

    async def run(self) -> None:
        while True:
            await self.tick()

    async def tick(self) -> float:
        """One measurement: the lag observed (seconds past the interval)."""
        started = self._clock()
        await self._sleep(self._interval)
        lag = max(0.0, self._clock() - started - self._interval)
        self._observe(lag)
        longest = self._steps.take_longest()
        if lag >= self._warn_after:
            self._warn(lag, longest)
        return lag

    def _warn(self, lag: float, longest: LongStep | None) -> None:
        # A step that took at least half the stall held the loop; shorter ones only ran in it.
        if longest is not None and longest.seconds >= lag / 2:
            _log.warning(
                "event loop stalled: a handler ran without awaiting (blocking code in an async "
                "handler holds every request and delivery of the process)",
                lag_seconds=round(lag, 3),
                subscription=longest.subscription,
                handler=longest.handler,
                step_seconds=round(longest.seconds, 3),
            )
            return
        _log.warning(
            "event loop stalled, not in a handler (CPU starvation, or blocking code elsewhere)",
            lag_seconds=round(lag, 3),
        )


def loop_lag_context(
    monitor: LoopLagMonitor,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The monitor's task for the app's cleanup_ctx: it runs as long as the app."""

    async def run_monitor(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(monitor.run(), name="conveyor-loop-lag")
        yield
        await stop_task(task, STOP_SECONDS)

    return run_monitor
