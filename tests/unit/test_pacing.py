"""Rate limits: the token bucket on a clock the test moves, the pacer's waits, the TOML keys."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from consumers import Event
from consumers.attempts import run_attempts
from consumers.deadlines import SharedTimeout
from consumers.pacing import Pacer, RateLimit, TokenBucket, parse_rate
from consumers.retry import RetryPolicy
from service import SettingError, load_subscriptions
from tests.support.waiting import eventually


def test_rates_and_bursts_parse() -> None:
    assert parse_rate("50/s", 10) == RateLimit(50.0, 10, "50/s")
    assert parse_rate("120/m") == RateLimit(2.0, 2, "120/m")
    assert parse_rate("36/h") == RateLimit(0.01, 1, "36/h")  # default burst at least 1
    assert parse_rate(" 2.5 / s ").per_second == 2.5
    for bad in ("50", "50/d", "0/s", "-1/s", "fast", 50, None):
        with pytest.raises(ValueError, match="rate as"):
            parse_rate(bad)
    for burst in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="burst as"):
            parse_rate("1/s", burst)


def test_the_bucket_gives_the_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(parse_rate("50/s", 10))
    now = 100.0
    waits = [bucket.reserve(now) for _ in range(15)]
    assert waits[:10] == [0.0] * 10
    # Reserved in order: each later start waits one more interval of 20 ms.
    assert waits[10:] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10])
    # 0.1 s later the debt of five is paid; the next token comes 20 ms after that.
    assert bucket.reserve(now + 0.1) == pytest.approx(0.02)


def test_the_bucket_refills_up_to_its_burst_only() -> None:
    bucket = TokenBucket(parse_rate("10/s", 3))
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # A long quiet spell refills three tokens, not thirty.
    assert [bucket.reserve(10.0) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


def test_a_reservation_given_back_returns_its_token() -> None:
    bucket = TokenBucket(parse_rate("1/s", 1))
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(1.0)
    bucket.give_back(0.0)  # the waiter was stopped
    assert bucket.reserve(0.0) == pytest.approx(1.0)  # not 2.0


def test_two_hundred_starts_at_fifty_a_second_take_three_point_eight_seconds() -> None:
    bucket = TokenBucket(parse_rate("50/s", 10))
    last = max(bucket.reserve(0.0) for _ in range(200))
    assert last == pytest.approx(3.8)


class _Waits:
    def __init__(self) -> None:
        self.waiting = 0
        self.seconds = 0.0

    def rate_wait_began(self, subscription: str) -> None:
        assert subscription == "s"
        self.waiting += 1

    def rate_wait_ended(self, subscription: str, seconds: float) -> None:
        assert subscription == "s"
        self.waiting -= 1
        self.seconds += seconds


async def test_the_pacer_waits_for_its_token_and_a_shutdown_ends_the_wait() -> None:
    stopping = asyncio.Event()
    waits = _Waits()
    bucket = TokenBucket(parse_rate("1/h", 1))
    pacer = Pacer("s", bucket, observer=waits, stopping=stopping)
    assert await pacer.start()  # the burst
    assert waits.waiting == 0
    second = asyncio.create_task(pacer.start())  # an hour to wait

    async def waiting() -> bool:
        return waits.waiting == 1

    await eventually(waiting, what="the second start to wait for its token")
    stopping.set()
    assert await second is False
    assert waits.waiting == 0
    # Its reservation went back: the next start still waits one hour, not two.
    assert bucket.reserve(asyncio.get_running_loop().time()) == pytest.approx(3600.0, abs=1.0)


async def test_a_pacer_without_a_bucket_never_waits() -> None:
    waits = _Waits()
    pacer = Pacer("s", None, observer=waits, stopping=asyncio.Event())
    assert all([await pacer.start() for _ in range(1000)])
    assert waits.seconds == 0.0


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "subscriptions.toml"
    path.write_text(
        "[[subscriptions]]\nname = 'slow'\nevents = ['a']\n"
        f"handler = 'consumers.builtin:discard'\n{extra}\n"
    )
    return path


def test_rate_keys_in_the_file(tmp_path: Path) -> None:
    [loaded] = load_subscriptions(_config(tmp_path, 'rate = "50/s"\nburst = 10'))
    assert loaded.rate == RateLimit(50.0, 10, "50/s")
    [scoped] = load_subscriptions(_config(tmp_path, 'rate = "5/m"\nrate_scope = "process"'))
    assert scoped.rate == RateLimit(5 / 60, 1, "5/m")
    [slow] = load_subscriptions(_config(tmp_path, 'rate = "10/h"\nprefetch = 4\nconcurrency = 1'))
    assert slow.rate == RateLimit(10 / 3600, 1, "10/h")
    [unlimited] = load_subscriptions(_config(tmp_path, ""))
    assert unlimited.rate is None


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('rate = "50 per second"', "(slow).rate as"),
        ('rate = "50/s"\nburst = 0', "(slow).burst as"),
        ("burst = 5", "(slow).burst only with rate"),
        ('rate = "1/s"\nrate_scope = "global"', "(slow).rate_scope among ['process']"),
        # 32 deliveries held at one start a minute: the last would wait past consumer_timeout.
        ('rate = "1/m"', "(slow).rate and prefetch that start every delivery held within 25"),
    ],
)
def test_bad_rate_keys_are_named(tmp_path: Path, extra: str, named: str) -> None:
    with pytest.raises(SettingError, match=re.escape(named)):
        load_subscriptions(_config(tmp_path, extra))


async def test_each_in_process_retry_waits_for_its_own_token() -> None:
    calls: list[int] = []
    paced: list[int] = []

    async def failing(event: Event) -> None:
        calls.append(event.attempt)
        raise RuntimeError("down")

    async def pace() -> bool:
        paced.append(len(calls))
        return True

    event = Event(id="1", source="/s", type="t", specversion="1.0")
    policy = RetryPolicy(in_process=3, delays=())
    result = await run_attempts(
        failing, event, policy=policy, timeout=SharedTimeout(5), keep_trying=lambda: True, pace=pace
    )
    assert result.attempts == 3
    assert calls == [1, 2, 3]
    assert paced == [1, 2]  # before the second and the third attempt (the caller paced the first)


async def test_a_shutdown_during_the_wait_ends_the_retries_with_the_last_failure() -> None:
    calls: list[int] = []
    stopping = False

    async def failing(event: Event) -> None:
        calls.append(event.attempt)
        raise RuntimeError(f"down on attempt {event.attempt}")

    async def pace() -> bool:
        nonlocal stopping
        stopping = True
        return False

    event = Event(id="1", source="/s", type="t", specversion="1.0")
    result = await run_attempts(
        failing,
        event,
        policy=RetryPolicy(in_process=3, delays=()),
        timeout=SharedTimeout(5),
        keep_trying=lambda: not stopping,
        pace=pace,
    )
    assert calls == [1]
    assert result.attempts == 1
    assert result.failure is not None
    assert result.failure.message == "down on attempt 1"
