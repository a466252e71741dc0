"""Edge cases found in review: headers that cannot be re-encoded, Retry-After oddities, ids."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from consumers.moves import MAX_HEADER_TABLE_BYTES, MoveFailedError, fit_headers
from consumers.webhook import WebhookOptions, _retry_after
from producers.same_id import SameIdGate
from service.settings import parse_duration


def test_headers_pamqp_reads_but_cannot_write_are_made_writable() -> None:
    fitted = fit_headers({"raw": b"\xff\xfe", "huge": 1e300, "nested": {"b": b"x"}, "ok": 1.5})
    assert fitted["raw"] == bytearray(b"\xff\xfe")
    assert fitted["huge"] == "1e+300"
    assert fitted["nested"] == {"b": bytearray(b"x")}
    assert fitted["ok"] == 1.5


def test_oversized_headers_lose_our_traceback_and_message_first() -> None:
    padding = "p" * (MAX_HEADER_TABLE_BYTES - 1000)
    fitted = fit_headers(
        {
            "pad": padding,
            "x-conveyor-error-traceback": "t" * 2000,
            "x-conveyor-error-message": "m" * 1000,
            "x-conveyor-reason": "retries-exhausted",
        }
    )
    assert "x-conveyor-error-traceback" not in fitted
    assert fitted["x-conveyor-reason"] == "retries-exhausted"
    assert fitted["pad"] == padding


def test_headers_too_large_on_their_own_fail_the_move() -> None:
    with pytest.raises(MoveFailedError):
        fit_headers({"pad": "p" * (MAX_HEADER_TABLE_BYTES + 10)})


@pytest.mark.parametrize("value", ["²", "soon", "Mon, 32 Foo 2026", ""])
def test_unusable_retry_after_values_are_ignored(value: str) -> None:
    assert _retry_after(value) is None


def test_a_retry_after_date_without_zone_counts_as_gmt() -> None:
    later = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    seconds = _retry_after(later)
    assert seconds is not None
    assert 50 < seconds <= 60


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"url": "http://x/", "timeout": "0s"}, "above zero"),
        ({"url": "http://x/", "headers": {"X-A": "a\r\nInjected: 1"}}, "single-line"),
        ({"url": "http://x/", "retries": 3}, "unknown"),
    ],
)
def test_webhook_options_that_would_fail_every_request_are_refused(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        WebhookOptions.parse(options, parse_duration)


async def test_same_ids_take_turns_and_different_ids_do_not_wait() -> None:
    gate = SameIdGate()
    order: list[str] = []

    async def hold(message_id: str, label: str) -> None:
        async with gate.turn(message_id):
            order.append(f"{label} in")
            await asyncio.sleep(0.05)
            order.append(f"{label} out")

    await asyncio.gather(hold("a", "a1"), hold("a", "a2"), hold("b", "b1"))
    assert order.index("a1 out") < order.index("a2 in")
    assert order.index("b1 in") < order.index("a1 out")
    assert gate._waiting == {}  # nothing left behind


async def test_a_held_id_makes_turns_wait_and_a_cancelled_waiter_passes_its_turn_on() -> None:
    gate = SameIdGate()
    assert gate.try_hold("a")
    assert not gate.try_hold("a")
    assert gate.try_hold("b")
    order: list[str] = []

    async def take(name: str) -> None:
        async with gate.turn("a"):
            order.append(name)

    first = asyncio.create_task(take("first"))
    cancelled = asyncio.create_task(take("cancelled"))
    last = asyncio.create_task(take("last"))
    await asyncio.sleep(0)
    assert order == []  # "a" is held
    cancelled.cancel()
    gate.release("a")
    await asyncio.gather(first, last, cancelled, return_exceptions=True)
    assert order == ["first", "last"]
    assert gate.try_hold("a")  # free again once every turn ended
    gate.release("a")
    gate.release("b")
