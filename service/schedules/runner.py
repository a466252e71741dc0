"""Firing schedules: each tick's event goes through the ingress's own path, once per tick.

Every process that runs the ingress runs every schedule. A tick's event has the id
`{name}:{tick time}` and the same content everywhere, so the ingress's claim on its source and
id (over the shared store) lets one process publish it and makes the others' copies replays.

While it runs, a schedule fires each tick in order; a tick that cannot be published (the broker
or the store away, another process still publishing it) is retried until it is, and the ticks
that came due meanwhile follow it. The newest tick fired is recorded in the store; at start,
the ticks since the recorded one fell into a stop, and the schedule's `missed` policy decides
which of them still fire.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from producers import OutgoingEvent
from producers.event import format_timestamp
from service.cancellation import STOP_SECONDS, stop_if_cancelled, stop_task
from service.clock import SYSTEM_CLOCK, Clock
from service.http.idempotency import EventIdConflictError, IdempotencyInProgressError
from service.http.status_book import StatusBook
from service.schedules.config import MAX_MISSED_TICKS, Missed, Schedule
from service.store import Statements, Store, describe

__all__ = ["Scheduler", "missed_ticks_to_fire"]

_log = structlog.get_logger(component="schedules")
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# The clock is read again at least this often while waiting for a tick, so that a wall clock
# that jumped (an NTP step, a suspended machine) is noticed.
MAX_SLEEP_SECONDS = 5.0

Publish = Callable[[OutgoingEvent], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


def missed_ticks_to_fire(missed: Sequence[float], policy: Missed) -> list[float]:
    """Which of the ticks a stop missed (oldest first, at most MAX_MISSED_TICKS) still fire."""
    match policy:
        case Missed.SKIP:
            return []
        case Missed.LAST:
            return list(missed[-1:])
        case Missed.ALL:
            return list(missed)


@dataclass(slots=True)
class _Progress:
    """What this process knows of one schedule beyond the store."""

    started_at: float | None = None  # when this process began running it
    failing: str | None = None  # why the tick being fired has not gone out yet
    skipped: int = 0  # missed ticks the policy did not fire, since this process started


class Scheduler:
    def __init__(
        self,
        schedules: Sequence[Schedule],
        *,
        publish: Publish,
        store: Store,
        book: StatusBook,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.schedules = tuple(schedules)
        self._publish = publish
        self._store = store
        self._book = book
        self._clock = clock
        self._sleep = sleep
        self._progress = {schedule.name: _Progress() for schedule in self.schedules}
        self._tasks: list[asyncio.Task[None]] = []
        self._aside: set[asyncio.Task[None]] = set()  # ticks held by another process's claim

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(schedule), name=f"conveyor-schedule-{schedule.name}")
            for schedule in self.schedules
        ]

    async def close(self) -> None:
        tasks = [*self._tasks, *self._aside]
        await asyncio.gather(*(stop_task(task, STOP_SECONDS) for task in tasks))
        self._tasks = []

    def now(self) -> float:
        return self._clock.now()

    async def listing(self) -> list[dict[str, Any]]:
        """Each schedule with its last tick (fired by any process), the outcome of that tick's
        event, and its next tick."""
        recorded = dict(await self._store.query(Statements.select_ticks))
        now = self._clock.now()
        listed = []
        for schedule in self.schedules:
            progress = self._progress[schedule.name]
            last = recorded.get(schedule.name)
            entry = schedule.describe()
            entry["next_tick"] = format_timestamp(schedule.timing.after(now))
            entry["last_tick"] = None if last is None else format_timestamp(last)
            entry["last_event"] = None if last is None else await self._outcome(schedule, last)
            started = progress.started_at
            entry["running_here_since"] = None if started is None else format_timestamp(started)
            entry["failing_here"] = progress.failing
            entry["skipped_here"] = progress.skipped
            listed.append(entry)
        return listed

    async def _outcome(self, schedule: Schedule, tick: float) -> dict[str, Any]:
        event_id = schedule.event_id(tick)
        found = await self._book.lookup(event_id, schedule.source)
        # No status once it expired (CONVEYOR_STATUS_TTL).
        state = found[0].state if found else None
        return {"id": event_id, "state": state}

    async def _run(self, schedule: Schedule) -> None:
        progress = self._progress[schedule.name]
        recorded = await self._recorded_tick(schedule)
        progress.started_at = now = self._clock.now()
        if recorded is None:
            cursor = now  # never fired: from now on
        else:
            missed = schedule.timing.newest(recorded, now, MAX_MISSED_TICKS)
            chosen = missed_ticks_to_fire(missed, schedule.missed)
            if len(chosen) < len(missed):
                progress.skipped += len(missed) - len(chosen)
                _log.info(
                    "schedule ticks missed while stopped, not fired",
                    schedule=schedule.name,
                    missed=schedule.missed.value,
                    skipped=len(missed) - len(chosen),
                    since=format_timestamp(recorded),
                )
            for tick in chosen:
                await self._fire(schedule, tick, progress)
            cursor = missed[-1] if missed else recorded
        while True:
            now = self._clock.now()
            due = schedule.timing.newest(cursor, now, MAX_MISSED_TICKS)
            if not due:
                wait = schedule.timing.after(cursor) - now
                await self._sleep(max(0.0, min(wait, MAX_SLEEP_SECONDS)))
                continue
            for tick in due:
                await self._fire(schedule, tick, progress)
            cursor = due[-1]

    async def _recorded_tick(self, schedule: Schedule) -> float | None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                rows = await self._store.query(Statements.select_ticks)
            except Exception as error:  # noqa: BLE001 - the store may be away: try again
                stop_if_cancelled(error)
                _log.warning(
                    "could not read the schedule's last tick; retrying",
                    schedule=schedule.name,
                    error=describe(error),
                )
                delay = await self._pause(delay)
                continue
            recorded = dict(rows).get(schedule.name)
            return None if recorded is None else float(recorded)

    async def _fire(self, schedule: Schedule, tick: float, progress: _Progress) -> None:
        """Publish the tick's event (or find it published by another process), retried until
        it is; then record the tick. A tick another process holds the claim of (it may have
        died holding it) is retried aside, so the ticks after it are not held up."""
        event = schedule.event(tick)
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                await self._publish(event)
            except IdempotencyInProgressError:
                if len(self._aside) < MAX_MISSED_TICKS:
                    task = asyncio.create_task(self._fire_aside(schedule, event, progress))
                    self._aside.add(task)
                    task.add_done_callback(self._aside.discard)
                    return
                delay = await self._pause(delay)
                continue
            except EventIdConflictError as error:
                # Another process fired this tick with other content (a rolling change of the
                # schedule's data): that event stands; retrying would never succeed.
                progress.failing = str(error)
                _log.error("schedule tick refused", schedule=schedule.name, error=str(error))
                return
            except Exception as error:  # noqa: BLE001 - the broker or the store away: retried
                stop_if_cancelled(error)
                progress.failing = describe(error)
                _log.warning(
                    "schedule tick not published yet; retrying",
                    schedule=schedule.name,
                    event_id=event.id,
                    error=describe(error),
                )
                delay = await self._pause(delay)
                continue
            break
        progress.failing = None
        await self._record(schedule, tick)

    async def _fire_aside(
        self, schedule: Schedule, event: OutgoingEvent, progress: _Progress
    ) -> None:
        """Retry a tick whose claim another process holds: it publishes it, or its lease runs
        out and this process does."""
        delay = RETRY_FIRST_SECONDS
        while True:
            delay = await self._pause(delay)
            try:
                await self._publish(event)
            except EventIdConflictError as error:
                progress.failing = str(error)
                _log.error("schedule tick refused", schedule=schedule.name, error=str(error))
                return
            except Exception as error:  # noqa: BLE001 - in progress elsewhere, or away: retried
                stop_if_cancelled(error)
                continue
            return

    async def _record(self, schedule: Schedule, tick: float) -> None:
        record = (Statements.record_tick, (schedule.name, tick, self._clock.now()))
        try:
            await self._store.write([record])
        except Exception as error:  # noqa: BLE001 - the next tick records a newer one
            stop_if_cancelled(error)
            _log.warning(
                "could not record the schedule's tick",
                schedule=schedule.name,
                error=describe(error),
            )

    async def _pause(self, delay: float) -> float:
        """Sleep `delay` (jittered, so replicas do not retry in step); the next delay."""
        await self._sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
        return min(delay * 2, RETRY_MAX_SECONDS)
