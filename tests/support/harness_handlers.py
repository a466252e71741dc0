"""Handlers of the faithfulness scenarios (tests/integration/test_harness_faithful.py), named
from a subscriptions file, so the harness and `conveyor serve` load them the same way.

Each call is appended to `CALLS` (event id, attempt): the scenario clears it before each run.
"""

from __future__ import annotations

import asyncio

from consumers import Event, PermanentError

CALLS: list[tuple[str, int]] = []


async def succeed(event: Event) -> None:
    CALLS.append((event.id, event.attempt))


async def flaky(event: Event) -> None:
    """Fails while `event.attempt` is at most `data.failures`."""
    CALLS.append((event.id, event.attempt))
    if event.attempt <= int(event.data["failures"]):
        raise RuntimeError(f"flaky: attempt {event.attempt}")


async def always_fail(event: Event) -> None:
    CALLS.append((event.id, event.attempt))
    raise RuntimeError("the downstream is down")


async def permanent(event: Event) -> None:
    CALLS.append((event.id, event.attempt))
    raise PermanentError("this event can never succeed")


async def slow(event: Event) -> None:
    CALLS.append((event.id, event.attempt))
    await asyncio.sleep(30)  # far past the scenario's timeout


async def fail_when_asked(event: Event) -> None:
    CALLS.append((event.id, event.attempt))
    if event.data.get("fail"):
        raise RuntimeError("asked to fail")
