"""Confirm deadlines count the time the loop could watch: a deadline passed in a stall is waited
out as long again, a plain timeout is not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from producers.deadlines import settle_by, wait_by

STALL = 0.2


def _stall_then(loop: asyncio.AbstractEventLoop, settle: Any) -> None:
    """Block the loop past the deadline, then settle as a confirm read from the socket would:
    a loop turn or two after the timers that expired meanwhile."""
    time.sleep(STALL)
    loop.call_soon(loop.call_soon, settle)


async def test_a_confirm_that_arrived_during_a_stall_is_read_not_timed_out() -> None:
    loop = asyncio.get_running_loop()
    confirmation: asyncio.Future[str] = loop.create_future()
    loop.call_soon(_stall_then, loop, lambda: confirmation.set_result("ack"))
    assert await settle_by(confirmation, loop.time() + 0.05) == "ack"


async def test_confirms_of_a_batch_that_arrived_during_a_stall_are_read() -> None:
    loop = asyncio.get_running_loop()
    confirmations: list[asyncio.Future[str]] = [loop.create_future() for _ in range(3)]

    def confirm_all() -> None:
        for confirmation in confirmations:
            confirmation.set_result("ack")

    loop.call_soon(_stall_then, loop, confirm_all)
    await wait_by(confirmations, loop.time() + 0.05)
    assert all(confirmation.done() for confirmation in confirmations)


async def test_a_confirm_that_never_comes_times_out_at_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    confirmation: asyncio.Future[str] = loop.create_future()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await settle_by(confirmation, started + 0.1)
    # Not before the deadline (uvloop counts whole milliseconds); how long after depends on how
    # late a loaded machine runs the timer, which this wait adds again by design.
    assert loop.time() - started >= 0.099
    assert confirmation.cancelled()  # aiormq ignores a confirm that comes later


async def test_a_cancelled_caller_is_cancelled_not_timed_out() -> None:
    loop = asyncio.get_running_loop()
    confirmation: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.ensure_future(settle_by(confirmation, loop.time() + 10))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.wait({waiting})
    assert waiting.cancelled()
    assert confirmation.cancelled()
