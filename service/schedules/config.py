"""`[[schedules]]` in the file named by CONVEYOR_CONFIG: periodic events, checked at load.

Each error names the schedule and the key, as the subscriptions' do.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from producers import InvalidEventError, OutgoingEvent
from producers.event import SPECVERSION, format_timestamp
from producers.formats import event_from_json
from service.schedules.timing import CronTiming, EveryTiming, Timing, parse_cron
from service.settings import SettingError, parse_duration

__all__ = ["MAX_MISSED_TICKS", "Missed", "Schedule", "load_schedules"]

SETTING = "CONVEYOR_CONFIG"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_KEYS = frozenset(("name", "cron", "every", "timezone", "type", "data", "source", "missed"))
MAX_SCHEDULES = 100
MAX_DATA_BYTES = 65536
MIN_EVERY_SECONDS = 1
MAX_EVERY_SECONDS = 366 * 24 * 3600
# "all" fires at most this many of the ticks a stop missed (the newest); the rest are skipped.
MAX_MISSED_TICKS = 100


class Missed(enum.StrEnum):
    """What happens to the ticks that fell into a stop."""

    SKIP = "skip"  # none of them fires
    LAST = "last"  # the newest of them fires
    ALL = "all"  # each fires, oldest first (the newest MAX_MISSED_TICKS)


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    timing: Timing
    type: str
    source: str
    data: Any  # JSON-ready, or None for an event without data
    missed: Missed

    def event_id(self, tick: float) -> str:
        return f"{self.name}:{format_timestamp(tick)}"

    def event(self, tick: float) -> OutgoingEvent:
        """The tick's event: the same in every process, so replicas' copies are duplicates."""
        document: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.event_id(tick),
            "source": self.source,
            "type": self.type,
            "time": format_timestamp(tick),
        }
        if self.data is not None:
            document["data"] = self.data
        return event_from_json(document)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.timing.describe(),
            "type": self.type,
            "source": self.source,
            "missed": self.missed.value,
        }


def load_schedules(path: Path) -> tuple[Schedule, ...]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SettingError(SETTING, f"a readable TOML file ({error})") from None
    entries = document.get("schedules", [])
    if not isinstance(entries, list) or len(entries) > MAX_SCHEDULES:
        raise SettingError(SETTING, f"at most {MAX_SCHEDULES} [[schedules]] tables")
    schedules = tuple(_schedule(index, entry) for index, entry in enumerate(entries))
    names = [schedule.name for schedule in schedules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SettingError(SETTING, f"unique schedule names; repeated: {', '.join(duplicates)}")
    return schedules


def _schedule(index: int, entry: Any) -> Schedule:
    where = f"schedules[{index}]"
    if not isinstance(entry, dict):
        raise SettingError(SETTING, f"{where} to be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SettingError(SETTING, f"{where}.name of a-z, 0-9, '_' or '-'", str(name))
    where = f"schedules[{index}] ({name})"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise SettingError(SETTING, f"{where} keys among {sorted(_KEYS)}; unknown: {unknown}")
    missed_text = entry.get("missed", Missed.LAST.value)
    if missed_text not in {missed.value for missed in Missed}:
        raise SettingError(
            SETTING, f"{where}.missed among {[m.value for m in Missed]}", str(missed_text)
        )
    source = entry.get("source", f"/conveyor/schedules/{name}")
    event_type = entry.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise SettingError(SETTING, f"{where}.type as the events' type, such as 'billing.due'")
    if not isinstance(source, str) or not source:
        raise SettingError(SETTING, f"{where}.source as a URI reference", str(source))
    schedule = Schedule(
        name=name,
        timing=_timing(entry, where),
        type=event_type,
        source=source,
        data=entry.get("data"),
        missed=Missed(missed_text),
    )
    _check_event(schedule, where)
    return schedule


def _timing(entry: dict[str, Any], where: str) -> CronTiming | EveryTiming:
    cron, every = entry.get("cron"), entry.get("every")
    if (cron is None) == (every is None):
        raise SettingError(SETTING, f"{where}: either cron or every (one of them, not both)")
    if every is not None:
        if "timezone" in entry:
            # Intervals count from the Unix epoch; a time zone would change nothing.
            raise SettingError(SETTING, f"{where}.timezone only with cron, not with every")
        return _every(every, where)
    if not isinstance(cron, str):
        raise SettingError(SETTING, f"{where}.cron as a cron line such as '0 2 * * *'", str(cron))
    zone_name = entry.get("timezone", "UTC")
    try:
        timezone = ZoneInfo(zone_name) if isinstance(zone_name, str) else None
    except (ZoneInfoNotFoundError, ValueError):
        timezone = None
    if timezone is None:
        raise SettingError(
            SETTING, f"{where}.timezone as an IANA name such as 'Europe/Berlin'", str(zone_name)
        )
    try:
        return parse_cron(cron, timezone)
    except ValueError as error:
        raise SettingError(
            SETTING, f"{where}.cron as a cron line such as '0 2 * * *' ({error})", str(cron)
        ) from None


def _every(value: Any, where: str) -> EveryTiming:
    try:
        seconds = parse_duration(value) if isinstance(value, str) else -1.0
    except ValueError:
        seconds = -1.0
    if not seconds.is_integer() or not MIN_EVERY_SECONDS <= seconds <= MAX_EVERY_SECONDS:
        raise SettingError(
            SETTING,
            f"{where}.every as whole seconds from 1s to 366d, such as '30s' or '1h'",
            str(value),
        )
    return EveryTiming(int(seconds), value)


def _check_event(schedule: Schedule, where: str) -> None:
    """Build a tick's event now, so that what the ingress would refuse is refused at load."""
    try:
        event = schedule.event(0.0)
    except InvalidEventError as error:
        raise SettingError(SETTING, f"{where}: a valid event ({error})") from None
    except (TypeError, orjson.JSONEncodeError) as error:
        raise SettingError(SETTING, f"{where}.data as JSON-ready data ({error})") from None
    if len(event.data) > MAX_DATA_BYTES:
        raise SettingError(SETTING, f"{where}.data of at most {MAX_DATA_BYTES} bytes as JSON")
