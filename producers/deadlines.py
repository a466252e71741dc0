"""Waiting for confirms by a deadline that counts only time the event loop could watch for them.

A loop held up past a deadline (a handler that blocked it) may have the confirms unread in the
socket when its timer fires; without this, such a publish was answered 503 and logged as timed
out although RabbitMQ had confirmed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["settle_by", "wait_by"]


async def wait_by(confirmations: Sequence[asyncio.Future[Any]], deadline: float) -> None:
    """Wait for `confirmations` until `deadline` (event-loop time), counting only time the loop
    could watch for them.

    A loop held up past the deadline (a handler that blocked it) may have the confirms unread
    in the socket when its timer fires: the wait goes on for as long again as the loop was
    late, so they are read before a publish is called timed out.
    """
    loop = asyncio.get_running_loop()
    _, pending = await asyncio.wait(confirmations, timeout=max(0.0, deadline - loop.time()))
    late = loop.time() - deadline
    if pending and late > 0:
        await asyncio.wait(pending, timeout=late)


async def settle_by(confirmation: asyncio.Future[Any], deadline: float) -> Any:
    """`confirmation`'s result once it settles by `deadline` (as `wait_by` counts it); else
    cancel it (aiormq ignores the late confirm) and raise TimeoutError.

    One timer and a plain await, as `asyncio.timeout` costs: this is on every single publish.
    """
    loop = asyncio.get_running_loop()
    timed_out = False
    timer: asyncio.TimerHandle | None = None

    def expire(first: bool) -> None:  # noqa: FBT001 - a timer callback takes positional arguments
        nonlocal timer, timed_out
        if confirmation.done():
            return
        late = loop.time() - deadline
        if first and late > 0:
            timer = loop.call_at(loop.time() + late, expire, False)  # noqa: FBT003 - as above
            return
        timed_out = True
        confirmation.cancel()

    timer = loop.call_at(deadline, expire, True)  # noqa: FBT003 - as above
    try:
        return await confirmation
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if timed_out and (task is None or not task.cancelling()):
            raise TimeoutError from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
