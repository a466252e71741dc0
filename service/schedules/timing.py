"""When a schedule's ticks fall: a cron expression in a time zone (croniter), or a fixed interval.

Ticks are Unix seconds, whole seconds, the same in every process that reads the same
configuration, since a tick's event id is made from its time and the ingress's dedup of source
and id is what makes replicas fire it once.

Daylight saving time is croniter's: a local time that does not exist (the hour skipped in
spring) fires at the first time after the gap (`30 2 * * *` in Europe/Berlin fires at 03:00 on
the last Sunday of March), and a local time that occurs twice (the hour repeated in autumn)
fires twice, once at each UTC instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped] # croniter ships no type hints

__all__ = ["CronTiming", "EveryTiming", "Timing", "parse_cron"]

# croniter also takes a seventh field (years); a cron line has five, or six with seconds.
CRON_FIELDS = (5, 6)


class Timing(Protocol):
    def after(self, moment: float) -> float:
        """The first tick strictly after `moment`."""
        ...

    def newest(self, after: float, until: float, limit: int) -> list[float]:
        """The ticks in (`after`, `until`], at most the `limit` newest, oldest first."""
        ...

    def describe(self) -> dict[str, str]: ...


def parse_cron(expression: str, timezone: ZoneInfo) -> CronTiming:
    """A cron timing; ValueError saying what is wrong with the expression."""
    fields = expression.split()
    if len(fields) not in CRON_FIELDS:
        raise ValueError(f"five fields, or six with seconds first; got {len(fields)}")
    # Six fields: seconds first, as Quartz and Spring write them (croniter's default puts them
    # last).
    seconds_first = len(fields) == CRON_FIELDS[1]
    try:
        croniter(expression, 0.0, second_at_beginning=seconds_first)
    except ValueError as error:  # croniter's CroniterError family derives from it
        raise ValueError(str(error)) from None
    return CronTiming(expression, timezone, seconds_first=seconds_first)


@dataclass(frozen=True, slots=True)
class CronTiming:
    expression: str
    timezone: ZoneInfo
    seconds_first: bool = False

    def _iterator(self, moment: float) -> croniter:
        start = datetime.fromtimestamp(moment, UTC).astimezone(self.timezone)
        return croniter(self.expression, start, second_at_beginning=self.seconds_first)

    def after(self, moment: float) -> float:
        return float(self._iterator(moment).get_next(float))

    def newest(self, after: float, until: float, limit: int) -> list[float]:
        # Ticks are whole seconds: those at or before `until` are those before its next second.
        ticks = self._iterator(math.floor(until) + 1.0)
        found: list[float] = []
        while len(found) < limit and (tick := float(ticks.get_prev(float))) > after:
            found.append(tick)
        return found[::-1]

    def describe(self) -> dict[str, str]:
        return {"cron": self.expression, "timezone": self.timezone.key}


@dataclass(frozen=True, slots=True)
class EveryTiming:
    """Every `seconds`, counted from the Unix epoch (so `every = "1h"` fires on the hour, UTC)."""

    seconds: int
    text: str

    def after(self, moment: float) -> float:
        return float((math.floor(moment) // self.seconds + 1) * self.seconds)

    def newest(self, after: float, until: float, limit: int) -> list[float]:
        last = math.floor(until) // self.seconds
        first = max(math.floor(after) // self.seconds + 1, last - limit + 1)
        return [float(index * self.seconds) for index in range(first, last + 1)]

    def describe(self) -> dict[str, str]:
        return {"every": self.text}
