"""Pure pieces of failure handling: tier names, the ladder, failure headers, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumers.dead_letter import DeadLetterReason, Failure, failure_headers, read_int
from consumers.retry import RetryPolicy, delay_label
from consumers.webhook import _retry_after


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(1, "1s"), (10, "10s"), (60, "1m"), (600, "10m"), (7200, "2h"), (0.25, "250ms"), (90, "90s")],
)
def test_delay_labels(seconds: float, label: str) -> None:
    assert delay_label(seconds) == label


def test_the_ladder_hands_out_each_tier_once_then_nothing() -> None:
    policy = RetryPolicy(in_process=3, delays=(1.0, 10.0))
    assert [policy.next_delay(n) for n in range(3)] == [1.0, 10.0, None]
    assert policy.max_attempts == 9
    assert RetryPolicy(in_process=2, delays=()).next_delay(0) is None


def test_failure_headers_keep_the_first_failure_and_the_original_route() -> None:
    try:
        raise ValueError("boom")  # noqa: TRY301 - a real traceback for the headers
    except ValueError as error:
        failure = Failure.from_exception(error)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    once = failure_headers(
        {"ce-id": "1"},
        failure=failure,
        attempts=3,
        exchange="ns.events",
        routing_key="a.b",
        now=first,
        retries=1,
    )
    twice = failure_headers(
        once,
        failure=failure,
        attempts=6,
        exchange="",
        routing_key="ns.sub",
        now=first + timedelta(minutes=1),
        reason=DeadLetterReason.RETRIES_EXHAUSTED,
    )
    assert twice["ce-id"] == "1"
    assert twice["x-conveyor-first-failure"] == "2026-01-01T00:00:00Z"
    assert twice["x-conveyor-last-failure"] == "2026-01-01T00:01:00Z"
    assert twice["x-conveyor-original-exchange"] == "ns.events"
    assert twice["x-conveyor-original-routing-key"] == "a.b"
    assert twice["x-conveyor-attempts"] == 6
    assert twice["x-conveyor-retries"] == 1
    assert twice["x-conveyor-reason"] == "retries-exhausted"
    assert twice["x-conveyor-error-class"] == "ValueError"
    assert "boom" in twice["x-conveyor-error-traceback"]


def test_read_int_ignores_what_is_not_a_count() -> None:
    assert read_int({"n": 3}, "n") == 3
    assert [read_int({"n": v}, "n") for v in ("3", -1, True, None)] == [0, 0, 0, 0]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("7") == 7.0
    soon = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    parsed = _retry_after(soon)
    assert parsed is not None
    assert 25 < parsed <= 30
    assert _retry_after("whenever") is None
    assert _retry_after(None) is None
