"""SharedTimeout: asyncio.timeout's behaviour, with one timer for many scopes.

Each behaviour is checked on `asyncio.timeout` too, so the tests show the two agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from consumers.deadlines import SharedTimeout

Scope = Callable[[float], AbstractAsyncContextManager[Any]]
# uvloop's clock counts whole milliseconds: 4938.945 - 4938.895 is 0.04999... in floating point,
# a timer of 0.05 s that fired on time (seen in `make test-uvloop`). Deadlines allow that much.
CLOCK_TICK = 0.001


def _shared(seconds: float) -> AbstractAsyncContextManager[Any]:
    return SharedTimeout(seconds)()


KINDS = pytest.mark.parametrize("scope", [_shared, asyncio.timeout], ids=["shared", "asyncio"])


@KINDS
async def test_a_scope_that_runs_past_its_time_raises_timeout_error_at_its_deadline(
    scope: Scope,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with scope(0.05):
            await asyncio.sleep(10)
    assert 0.05 - CLOCK_TICK <= loop.time() - started < 0.5


@KINDS
async def test_a_scope_that_ends_in_time_leaves_its_task_uncancelled(scope: Scope) -> None:
    async with scope(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # past the deadline: no cancellation arrives
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_one_timer_serves_scopes_that_end_and_expires_a_later_one_on_time() -> None:
    # The timer is set for the first scope; that scope ends at once, and the one entered
    # 50 ms later must still expire at its own deadline, neither at the first's nor never.
    shared = SharedTimeout(0.1)
    loop = asyncio.get_running_loop()
    async with shared():
        pass
    await asyncio.sleep(0.05)
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with shared():
            await asyncio.sleep(10)
    assert 0.1 - CLOCK_TICK <= loop.time() - started < 0.5
    assert not shared._open


async def test_scopes_in_many_tasks_expire_only_the_ones_that_ran_long() -> None:
    shared = SharedTimeout(0.1)

    async def run(seconds: float) -> str:
        try:
            async with shared():
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out"
        return "done"

    outcomes = await asyncio.gather(*(run(0.3 if n % 3 == 0 else 0.01) for n in range(30)))
    assert outcomes == ["timed out" if n % 3 == 0 else "done" for n in range(30)]


@KINDS
async def test_a_cancellation_from_elsewhere_stays_a_cancellation(scope: Scope) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with scope(10):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@KINDS
async def test_expiry_and_a_cancellation_from_elsewhere_together_stay_a_cancellation(
    scope: Scope,
) -> None:
    async def body() -> None:
        async with scope(0.05):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                # Cancelled from elsewhere while the expiry's cancellation is under way.
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(body())


def test_a_shared_timeout_used_on_a_second_loop_still_expires_there() -> None:
    # The first loop ends with the timer still set for a scope it left open.
    shared = SharedTimeout(0.05)

    async def stuck_then_abandoned() -> None:
        scope = shared()
        await scope.__aenter__()  # never left: its loop goes away first

    async def runs_long() -> str:
        try:
            async with shared():
                await asyncio.sleep(1)
        except TimeoutError:
            return "timed out"
        return "ran on"

    asyncio.run(stuck_then_abandoned())
    assert asyncio.run(runs_long()) == "timed out"
