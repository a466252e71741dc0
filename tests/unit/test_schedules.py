"""Schedules: the `[[schedules]]` table is checked at load, ticks fall where cron and the time
zone say (daylight saving included), and a restart fires what `missed` says, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from producers import OutgoingEvent
from service import SettingError
from service.schedules import Missed, Schedule, Scheduler, load_schedules
from service.schedules.runner import missed_ticks_to_fire
from service.store import Statements, Store, open_store

BERLIN = ZoneInfo("Europe/Berlin")
NIGHTLY = """
[[schedules]]
name = "nightly-reconcile"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
type = "billing.reconcile"
data = { scope = "all" }
missed = "all"

[[schedules]]
name = "heartbeat"
every = "30s"
type = "service.heartbeat"
"""


def load(tmp_path: Path, text: str) -> tuple[Schedule, ...]:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return load_schedules(path)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_good_table_loads_with_defaults(tmp_path: Path) -> None:
    nightly, heartbeat = load(tmp_path, NIGHTLY)
    assert nightly.missed is Missed.ALL
    assert heartbeat.missed is Missed.LAST
    assert heartbeat.source == "/conveyor/schedules/heartbeat"
    event = nightly.event(utc("2026-12-07T01:00:00"))
    assert event.id == "nightly-reconcile:2026-12-07T01:00:00Z"
    assert event.source == "/conveyor/schedules/nightly-reconcile"
    assert event.type == "billing.reconcile"
    assert event.attributes["time"] == "2026-12-07T01:00:00Z"
    assert orjson.loads(event.data) == {"scope": "all"}
    assert heartbeat.event(60.0).data == b""
    assert nightly.describe()["timezone"] == "Europe/Berlin"


def test_no_schedules_table_is_no_schedules(tmp_path: Path) -> None:
    text = "[[subscriptions]]\nname = 'a'\nevents = ['a']\nhandler = 'consumers.builtin:discard'\n"
    assert load(tmp_path, text) == ()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('name = "x"\ncron = "* * * * *"\ntype = "t"\ncolour = 1', r"schedules\[0\] \(x\) keys"),
        ('name = "x"\ncron = "61 * * * *"\ntype = "t"', r"\(x\)\.cron as a cron line"),
        ('name = "x"\ncron = "* * *"\ntype = "t"', r"\(x\)\.cron .*five fields"),
        ('name = "x"\ncron = "* * * * * * *"\ntype = "t"', r"\(x\)\.cron .*got 7"),
        ('name = "x"\ncron = "* * * * *"\ntimezone = "Mars/Olympus"\ntype = "t"', r"timezone"),
        ('name = "x"\ncron = "* * * * *"\nevery = "1s"\ntype = "t"', r"\(x\): either cron or"),
        ('name = "x"\ntype = "t"', r"\(x\): either cron or every"),
        ('name = "x"\nevery = "1s"\ntimezone = "UTC"\ntype = "t"', r"timezone only with cron"),
        ('name = "x"\nevery = "500ms"\ntype = "t"', r"\(x\)\.every as whole seconds"),
        ('name = "x"\nevery = "soon"\ntype = "t"', r"\(x\)\.every"),
        ('name = "x"\nevery = "1s"\ntype = "t"\nmissed = "some"', r"\(x\)\.missed among"),
        ('name = "x"\nevery = "1s"', r"\(x\)\.type"),
        ('name = "X Y"\nevery = "1s"\ntype = "t"', r"schedules\[0\]\.name"),
        ('name = "x"\nevery = "1s"\ntype = "t"\nsource = ""', r"\(x\)\.source"),
        (f'name = "x"\nevery = "1s"\ntype = "{"t" * 300}"', r"\(x\): a valid event"),
    ],
)
def test_each_mistake_names_the_schedule(tmp_path: Path, table: str, expected: str) -> None:
    with pytest.raises(SettingError, match=expected) as raised:
        load(tmp_path, f"[[schedules]]\n{table}\n")
    assert raised.value.name == "CONVEYOR_CONFIG"


def test_repeated_names_are_refused(tmp_path: Path) -> None:
    table = '[[schedules]]\nname = "x"\nevery = "1s"\ntype = "t"\n'
    with pytest.raises(SettingError, match="repeated: x"):
        load(tmp_path, table * 2)


def test_six_fields_put_seconds_first(tmp_path: Path) -> None:
    (schedule,) = load(tmp_path, '[[schedules]]\nname = "x"\ncron = "*/15 * * * * *"\ntype = "t"')
    start = utc("2026-12-07T10:00:01")
    assert iso(schedule.timing.after(start)) == "2026-12-07T10:00:15Z"


def next_ticks(schedule: Schedule, start: str, count: int) -> list[str]:
    ticks, moment = [], utc(start)
    for _ in range(count):
        moment = schedule.timing.after(moment)
        ticks.append(datetime.fromtimestamp(moment, BERLIN).isoformat())
    return ticks


def test_daylight_saving_gap_and_repeat_in_berlin(tmp_path: Path) -> None:
    (daily,) = load(
        tmp_path,
        '[[schedules]]\nname = "x"\ncron = "30 2 * * *"\ntimezone = "Europe/Berlin"\ntype = "t"',
    )
    # Spring: 02:30 does not exist on 29 March 2026 (02:00 -> 03:00); it fires at 03:00.
    assert next_ticks(daily, "2026-03-27T12:00:00", 4) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # Autumn: 02:30 happens twice on 25 October 2026 (03:00 -> 02:00); it fires at both.
    assert next_ticks(daily, "2026-10-23T12:00:00", 4) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # Each tick has its own id: the repeated local time is two UTC instants.
    first, second = (daily.event(utc(t)).id for t in ("2026-10-25T00:30", "2026-10-25T01:30"))
    assert first != second


def test_every_counts_from_the_epoch_and_newest_is_bounded(tmp_path: Path) -> None:
    (hourly,) = load(tmp_path, '[[schedules]]\nname = "x"\nevery = "1h"\ntype = "t"')
    assert iso(hourly.timing.after(utc("2026-12-07T10:20:00"))) == "2026-12-07T11:00:00Z"
    ticks = hourly.timing.newest(utc("2026-12-07T00:00:00"), utc("2026-12-07T05:30:00"), 3)
    assert [iso(t) for t in ticks] == [
        "2026-12-07T03:00:00Z",
        "2026-12-07T04:00:00Z",
        "2026-12-07T05:00:00Z",
    ]
    cron = load(tmp_path, '[[schedules]]\nname = "y"\ncron = "0 * * * *"\ntype = "t"')[0]
    assert cron.timing.newest(utc("2026-12-07T00:00:00"), utc("2026-12-07T05:30:00"), 3) == ticks
    # `until` itself is included, `after` is not.
    assert cron.timing.newest(utc("2026-12-07T04:00:00"), utc("2026-12-07T05:00:00"), 9) == [
        utc("2026-12-07T05:00:00")
    ]


@pytest.mark.parametrize(
    ("policy", "fired"), [(Missed.SKIP, []), (Missed.LAST, [3.0]), (Missed.ALL, [1.0, 2.0, 3.0])]
)
def test_missed_policies(policy: Missed, fired: list[float]) -> None:
    assert missed_ticks_to_fire([1.0, 2.0, 3.0], policy) == fired
    assert missed_ticks_to_fire([], policy) == []


class FakeTime:
    """A clock that moves only when the scheduler sleeps."""

    def __init__(self, now: float) -> None:
        self.current = now

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += seconds
        await asyncio.sleep(0)


class Published:
    def __init__(self, wanted: int) -> None:
        self.ids: list[str] = []
        self.enough = asyncio.Event()
        self.wanted = wanted

    async def __call__(self, event: OutgoingEvent) -> None:
        self.ids.append(event.id)
        if len(self.ids) >= self.wanted:
            self.enough.set()


class NoStatuses:
    async def lookup(self, event_id: str, source: str | None = None) -> list[Any]:
        return []


@pytest.fixture
async def tick_store(tmp_path: Path) -> Any:
    opened = await open_store(f"sqlite:///{tmp_path}/ticks.db")
    yield opened
    await opened.close()


async def run_until(
    schedules: Sequence[Schedule], store: Store, time: FakeTime, published: Published
) -> Scheduler:
    scheduler = Scheduler(
        schedules,
        publish=published,
        store=store,
        book=NoStatuses(),  # type: ignore[arg-type] # the listing is not under test here
        clock=time,
        sleep=time.sleep,
    )
    scheduler.start()
    try:
        async with asyncio.timeout(10):
            await published.enough.wait()
            # Each tick is recorded in the store after its publish: wait for the last one's.
            last = published.ids[-1].split(":", 1)[1]
            while (await scheduler.listing())[0]["last_tick"] != last:  # noqa: ASYNC110 - a store read, no event to wait on
                await asyncio.sleep(0)
    finally:
        await scheduler.close()
    return scheduler


@pytest.mark.parametrize(
    ("policy", "after_restart", "skipped"),
    [
        (Missed.SKIP, ["08", "09", "10"], 4),
        (Missed.LAST, ["07", "08", "09", "10"], 3),
        (Missed.ALL, ["04", "05", "06", "07", "08", "09", "10"], 0),
    ],
)
async def test_a_restart_fires_what_missed_says(
    tmp_path: Path, tick_store: Store, policy: Missed, after_restart: list[str], skipped: int
) -> None:
    text = f'[[schedules]]\nname = "x"\nevery = "1s"\ntype = "t"\nmissed = "{policy}"\n'
    schedules = load(tmp_path, text)
    # The last run fired up to 10:00:03, then stopped; this one starts at 10:00:07.5, so
    # 10:00:04 to :07 fell into the stop; :08 to :10 come due while it runs.
    await tick_store.write([(Statements.record_tick, ("x", utc("2026-12-07T10:00:03"), 0.0))])
    time = FakeTime(utc("2026-12-07T10:00:07.5"))
    published = Published(len(after_restart))
    scheduler = await run_until(schedules, tick_store, time, published)
    assert published.ids == [f"x:2026-12-07T10:00:{second}Z" for second in after_restart]
    (entry,) = await scheduler.listing()
    assert entry["skipped_here"] == skipped
    assert entry["last_tick"] == "2026-12-07T10:00:10Z"
    assert entry["running_here_since"] == "2026-12-07T10:00:07.500000Z"


async def test_first_start_fires_from_now_on_and_retries_a_failed_publish(
    tmp_path: Path, tick_store: Store
) -> None:
    (schedule,) = load(tmp_path, '[[schedules]]\nname = "x"\nevery = "1s"\ntype = "t"\n')
    time = FakeTime(utc("2026-12-07T10:00:00.2"))
    published = Published(3)
    failures = iter([RuntimeError("broker away"), RuntimeError("still away")])

    async def flaky(event: OutgoingEvent) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        await published(event)

    scheduler = Scheduler(
        [schedule],
        publish=flaky,
        store=tick_store,
        book=NoStatuses(),  # type: ignore[arg-type] # the listing is not under test here
        clock=time,
        sleep=time.sleep,
    )
    scheduler.start()
    async with asyncio.timeout(10):
        await published.enough.wait()
    await scheduler.close()
    # 10:00:01 failed twice and went out late; the ticks behind it followed, in order.
    assert published.ids == [f"x:2026-12-07T10:00:0{s}Z" for s in (1, 2, 3)]
